"""`mlpmem targets`: the sparse kNN distribution of every datastore row (what MLP Memory imitates).

For each row: search k+1 neighbours, drop the row itself by id, weight the remaining k by
softmax(-d/T), sum per token, keep the K most probable tokens and renormalise them to 1.
Output (DESIGN.md): ``ids.npy`` int32 [N, K] (-1 pads), ``probs.npy`` float16 [N, K]
(0 pads) and the manifest, which also records how much mass the K tokens kept before
renormalisation. Rows are processed in fixed chunks with progress recorded after each,
so a killed run resumes and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import artifacts
from .datastore import Datastore, pick_device
from .errors import UserError
from .knn import aggregate_tokens, drop_self, neighbour_weights

log = logging.getLogger(__name__)
KIND = "knn_targets"


@dataclass(frozen=True)
class TargetSettings:
    index: str = "flat"  # flat (exact) | ivfflat | ivfpq
    k: int = 1024
    temperature: float = 16.0
    keep: int = 512  # K: tokens kept per row; keeps 99.1% of the mass on the embedded corpus (k=1024, T=16)
    nprobe: int = 32
    rerank: bool = False
    chunk: int = 4096  # rows per search; part of the byte-identity contract
    nlist: int | None = None  # IVF lists (None: about N/256, at most 4096)
    m: int = 64  # PQ sub-quantizers
    nbits: int = 8  # bits per PQ code
    train_size: int = 1_000_000  # keys sampled to train the index


def default_nlist(n_rows: int) -> int:
    """About 256 keys per list (faiss wants at least 39 per centroid), capped at the paper's 4096."""
    return int(min(4096, max(1, n_rows // 256)))


def ensure_index(datastore: str | Path, s: TargetSettings) -> None:
    """Build the faiss index the settings ask for next to the datastore, or reuse it (flat needs none)."""
    if s.index == "flat":
        return
    from .index import build_index

    n = len(Datastore(datastore))
    build_index(datastore, s.index, nlist=s.nlist or default_nlist(n), m=s.m, nbits=s.nbits,
                train_size=s.train_size)


def check_settings(s: TargetSettings, n_rows: int) -> None:
    if not 0 < s.k < n_rows:
        raise UserError(f"k={s.k} must be in [1, {n_rows - 1}] for a datastore of {n_rows} rows")
    if not s.temperature > 0:
        raise UserError(f"temperature {s.temperature} must be > 0")
    if not 0 < s.keep <= s.k:
        raise UserError(f"--keep {s.keep} must be in [1, k={s.k}]")
    if s.index not in ("flat", "ivfflat", "ivfpq"):
        raise UserError(f"unknown index {s.index!r}: choose flat, ivfflat or ivfpq")


def build_targets(datastore: str | Path, out: str | Path, settings: TargetSettings, backend: str = "auto",
                  device: str = "auto") -> dict[str, Any]:
    """Build (resume, or reuse) the kNN targets of every row of ``datastore``."""
    from .search import make_searcher

    ds, out = Datastore(datastore), Path(out)
    check_settings(settings, len(ds))
    identity = {"settings": asdict(settings), "datastore_fingerprint": ds.fingerprint}
    if artifacts.is_complete(out):
        manifest = artifacts.read_manifest(out, KIND)
        if {k: manifest.get(k) for k in identity} != identity:
            raise UserError(f"{out} holds targets of another datastore or settings: choose another --out or delete it")
        log.info("reusing targets %s", out)
        return manifest
    ensure_index(ds.path, settings)  # takes the datastore's lock itself: before ours
    dev = pick_device(device)
    with artifacts.artifact_lock(out):
        ids, probs, state = _open(out, identity, len(ds), settings.keep)
        searcher = make_searcher(ds.path, index=settings.index, backend=backend, device=str(dev),
                                 nprobe=settings.nprobe, rerank=settings.rerank)
        values = torch.from_numpy(np.asarray(ds.values, dtype=np.int64)).to(dev)
        n, step = len(ds), settings.chunk
        with tqdm(total=n, initial=state["done"], desc="targets", unit="row") as bar:
            for start in range(state["done"], n, step):
                stop = min(start + step, n)
                kept = _chunk(ds, searcher, values, settings, start, stop, ids, probs, dev)
                state = {"identity": identity, "done": stop, "mass_sum": state["mass_sum"] + float(kept.sum()),
                         "mass_min": min(state["mass_min"], float(kept.min()))}
                artifacts.atomic_write_text(out / "progress.json", json.dumps(state))
                bar.update(stop - start)
        return artifacts.write_manifest(out, KIND, {
            **identity, "datastore": str(datastore), "N": n, "k": settings.k, "temperature": settings.temperature,
            "K": settings.keep, "index": settings.index, "backend": type(searcher).__name__,
            "mass_kept_mean": state["mass_sum"] / n, "mass_kept_min": state["mass_min"],
            "fingerprint": artifacts.hash_json({**identity, "ids": artifacts.hash_file(out / "ids.npy")}),
        })


def _open(out: Path, identity: dict, n: int, keep: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Resume a run with the same identity, or allocate fresh arrays."""
    progress = out / "progress.json"
    state = json.loads(progress.read_text()) if progress.is_file() else None
    if state is None or state["identity"] != identity:
        artifacts.clear_partial(out)
        np.lib.format.open_memmap(out / "ids.npy", mode="w+", dtype=np.int32, shape=(n, keep)).flush()
        np.lib.format.open_memmap(out / "probs.npy", mode="w+", dtype=np.float16, shape=(n, keep)).flush()
        state = {"identity": identity, "done": 0, "mass_sum": 0.0, "mass_min": 1.0}
    return np.load(out / "ids.npy", mmap_mode="r+"), np.load(out / "probs.npy", mmap_mode="r+"), state


def _chunk(ds: Datastore, searcher, values: torch.Tensor, s: TargetSettings, start: int, stop: int,
           ids: np.ndarray, probs: np.ndarray, dev: torch.device) -> torch.Tensor:
    """Targets of rows [start, stop); returns the mass each row kept before renormalisation."""
    rows = torch.arange(start, stop, device=dev)
    queries = torch.from_numpy(np.asarray(ds.keys[start:stop], dtype=np.float32)).to(dev)
    dist, nbr = searcher.search(queries, s.k + 1)
    dist, nbr = drop_self(dist, nbr, rows)
    weights = neighbour_weights(dist, nbr, s.temperature)
    tokens = values[nbr.clamp_min(0)]
    tok, p, kept = aggregate_tokens(weights, tokens, s.keep)
    ids[start:stop] = tok.to(torch.int32).cpu().numpy()
    probs[start:stop] = p.to(torch.float16).cpu().numpy()
    ids.flush()
    probs.flush()
    return kept.cpu()


def mass_curve(datastore: str | Path, settings: TargetSettings, rows: int = 4096, seed: int = 0,
               backend: str = "auto", device: str = "auto") -> dict[int, dict[str, float]]:
    """How much kNN mass the K most probable tokens keep, on a seeded sample of rows.

    For K in powers of two up to k: the mean kept mass and the share of rows keeping >= 99%.
    This is how the default K was chosen; run it on your own corpus with ``mlpmem targets --mass-curve``.
    """
    from .search import make_searcher

    ds = Datastore(datastore)
    check_settings(settings, len(ds))
    ensure_index(ds.path, settings)
    dev = pick_device(device)
    searcher = make_searcher(ds.path, index=settings.index, backend=backend, device=str(dev),
                             nprobe=settings.nprobe, rerank=settings.rerank)
    sample = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(rows, len(ds)), replace=False))
    values = torch.from_numpy(np.asarray(ds.values, dtype=np.int64)).to(dev)
    queries = torch.from_numpy(np.asarray(ds.keys[sample], dtype=np.float32)).to(dev)
    dist, nbr = drop_self(*searcher.search(queries, settings.k + 1), torch.from_numpy(sample).to(dev))
    mass = aggregate_tokens(neighbour_weights(dist, nbr, settings.temperature), values[nbr.clamp_min(0)],
                            settings.k)[1].cumsum(1).cpu()
    sizes = [2 ** i for i in range(3, 11) if 2 ** i <= settings.k]
    return {K: {"mean": float(mass[:, K - 1].mean()), "rows_ge_99": float((mass[:, K - 1] >= 0.99).double().mean())}
            for K in sizes}


class KNNTargets:
    """Read side: memory-mapped sparse targets of a finished run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = artifacts.read_manifest(self.path, KIND)
        self.ids = artifacts.load_npy(self.path / "ids.npy")
        self.probs = artifacts.load_npy(self.path / "probs.npy")
        shape = (self.manifest["N"], self.manifest["K"])
        if self.ids.shape != shape or self.probs.shape != shape:
            raise UserError(f"{self.path}: arrays do not match the manifest {shape}: delete it and re-run targets")
