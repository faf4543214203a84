"""`mlpmem targets`: the sparse kNN distribution of every datastore row (what MLP Memory imitates).

For each row: search k+1 neighbours, drop the row itself by id, weight the remaining k by
softmax(-d/T), sum per token, keep the K most probable tokens and renormalise them to 1.
Output (DESIGN.md): ``ids.npy`` int32 [N, K] (-1 pads), ``probs.npy`` float16 [N, K]
(0 pads) and the manifest, which also records how much mass the K tokens kept before
renormalisation. Rows are processed in fixed chunks with progress recorded after each,
so a killed run resumes and ends byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.datastore import Datastore, pick_device
from mlpmem_lightning.knn.distributions import aggregate_tokens, drop_self, neighbour_weights
from mlpmem_lightning.knn.search.clustered import default_nlist
from mlpmem_lightning.knn.settings import TargetSettings

log = logging.getLogger(__name__)
KIND = "knn_targets"
SAVE_ROWS = 1 << 20  # rows between progress records on the list-by-list path
GROUP_ROWS = 1 << 16  # rows aggregated and written together on the list-by-list path


def ensure_index(datastore: str | Path, s: TargetSettings) -> None:
    """Build the faiss index the settings ask for next to the datastore, or reuse it (flat needs none)."""
    if s.index == "flat":
        return
    from mlpmem_lightning.knn.index import build_index

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
                  device: str = "auto", rank: int = 0, world_size: int = 1,
                  barrier: Callable[[], None] = lambda: None) -> dict[str, Any] | None:
    """Build (resume, or reuse) the kNN targets of every row of ``datastore``.

    Returns the manifest (rank 0) or None. With the ``clustered`` backend the rows are done list by
    list, and several ranks (``world_size``) split the lists; the others go in row chunks.
    """
    from mlpmem_lightning.knn.search import resolve_backend

    ds, out = Datastore(datastore), Path(out)
    check_settings(settings, len(ds))
    dev = pick_device(device)
    backend = resolve_backend(settings.index, backend, dev)
    if world_size > 1 and backend != "clustered":
        raise UserError("several devices need the clustered backend: pass --index ivfflat --backend clustered")
    identity = {"settings": settings.identity(), "datastore_fingerprint": ds.fingerprint, "backend": backend}
    if artifacts.is_complete(out):
        manifest = artifacts.read_manifest(out, KIND)
        if {k: manifest.get(k) for k in identity} != identity:
            raise UserError(f"{out} holds targets of another datastore, settings or backend (recorded != "
                            f"requested: {artifacts.diff(manifest, identity)}): choose another --out or delete it")
        log.info("reusing targets %s", out)
        return manifest
    if backend != "clustered":
        ensure_index(ds.path, settings)  # takes the datastore's lock itself: before ours
    with artifacts.artifact_lock(out) if rank == 0 else nullcontext(out):
        ids, probs, state = _open(out, identity, len(ds), settings.keep, rank, barrier)
        searcher = _searcher(ds, settings, backend, dev)
        values = torch.from_numpy(np.asarray(ds.values, dtype=np.int64)).to(dev)
        if backend == "clustered":
            _fill_lists(searcher, values, settings, ids, probs, out, state, rank, world_size)
        else:
            _fill_rows(ds, searcher, values, settings, ids, probs, out, state)
        barrier()
        if rank != 0:
            return None
        done = [json.loads(_progress_path(out, r).read_text()) for r in range(world_size)]
        return artifacts.write_manifest(out, KIND, {
            **identity, "datastore": str(datastore), "N": len(ds), "k": settings.k, "temperature": settings.temperature,
            "K": settings.keep, "index": settings.index, "searcher": type(searcher).__name__,
            "mass_kept_mean": sum(p["mass_sum"] for p in done) / len(ds),
            "mass_kept_min": min(p["mass_min"] for p in done),
            "search_inputs": _search_inputs(ds.path, settings, searcher),
            "fingerprint": artifacts.hash_json({**identity, "ids": artifacts.hash_file(out / "ids.npy")}),
        })


def _searcher(ds: Datastore, s: TargetSettings, backend: str, dev: torch.device):
    from mlpmem_lightning.knn.search import make_searcher

    return make_searcher(ds.path, index=s.index, backend=backend, device=str(dev), nprobe=s.nprobe,
                         rerank=s.rerank, nlist=s.nlist)


def _search_inputs(datastore: Path, s: TargetSettings, searcher) -> dict[str, Any]:
    """What the neighbours came from besides the keys: the stored faiss index's sha256, or the clustered
    backend's centroids (exact search has no other input)."""
    from mlpmem_lightning.knn.search.clustered import ClusteredIVF

    if isinstance(searcher, ClusteredIVF):
        cen = np.ascontiguousarray(searcher.centroids.cpu().numpy())
        return {"centroids_sha256": hashlib.sha256(cen.tobytes()).hexdigest(), "nlist": searcher.nlist}
    entry = artifacts.read_manifest(datastore, "datastore").get("indexes", {}).get(s.index)
    return {"index_sha256": entry["sha256"]} if s.index != "flat" and entry else {}


def _progress_path(out: Path, rank: int) -> Path:
    return out / f"progress.rank{rank}.json"


def _open(out: Path, identity: dict, n: int, keep: int, rank: int, barrier: Callable[[], None]
          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Resume this rank's part of a run with the same identity, or (rank 0) allocate fresh arrays."""
    def state() -> dict | None:
        path = _progress_path(out, rank)
        got = json.loads(path.read_text()) if path.is_file() else None
        return got if got is not None and got["identity"] == identity else None

    if rank == 0 and state() is None:
        artifacts.clear_partial(out)
        np.lib.format.open_memmap(out / "ids.npy", mode="w+", dtype=np.int32, shape=(n, keep)).flush()
        np.lib.format.open_memmap(out / "probs.npy", mode="w+", dtype=np.float16, shape=(n, keep)).flush()
    barrier()
    fresh = {"identity": identity, "done": None, "mass_sum": 0.0, "mass_min": 1.0}
    return np.load(out / "ids.npy", mmap_mode="r+"), np.load(out / "probs.npy", mmap_mode="r+"), state() or fresh


def _save(out: Path, rank: int, state: dict, arrays: tuple[np.ndarray, ...]) -> None:
    for a in arrays:
        a.flush()
    artifacts.atomic_write_text(_progress_path(out, rank), json.dumps(state))


def _with_mass(state: dict, kept: torch.Tensor) -> dict:
    """The progress state with the mass kept by more rows added to its running sum and minimum."""
    if not len(kept):
        return state
    return {**state, "mass_sum": state["mass_sum"] + float(kept.sum()),
            "mass_min": min(state["mass_min"], float(kept.min()))}


def _targets(s: TargetSettings, values: torch.Tensor, rows: torch.Tensor, dist: torch.Tensor, nbr: torch.Tensor
             ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(ids int32, probs float16, mass kept) of rows from their k+1 neighbours."""
    dist, nbr = drop_self(dist, nbr, rows)
    tok, p, kept = aggregate_tokens(neighbour_weights(dist, nbr, s.temperature), values[nbr.clamp_min(0)], s.keep)
    return tok.to(torch.int32).cpu().numpy(), p.to(torch.float16).cpu().numpy(), kept.cpu()


def _fill_rows(ds: Datastore, searcher, values: torch.Tensor, s: TargetSettings, ids: np.ndarray, probs: np.ndarray,
               out: Path, state: dict) -> None:
    """Rows in fixed chunks of ``s.chunk`` (part of the byte-identity contract), progress after each."""
    n, dev = len(ds), values.device
    first = state["done"] or 0
    with tqdm(total=n, initial=first, desc="targets", unit="row") as bar:
        for start in range(first, n, s.chunk):
            stop = min(start + s.chunk, n)
            queries = torch.from_numpy(np.asarray(ds.keys[start:stop], dtype=np.float32)).to(dev)
            rows = torch.arange(start, stop, device=dev)
            ids[start:stop], probs[start:stop], kept = _targets(s, values, rows, *searcher.search(queries, s.k + 1))
            state = {**_with_mass(state, kept), "done": stop}
            _save(out, 0, state, (ids, probs))
            bar.update(stop - start)


def _fill_lists(searcher, values: torch.Tensor, s: TargetSettings, ids: np.ndarray, probs: np.ndarray, out: Path,
                state: dict, rank: int, world_size: int) -> None:
    """This rank's share of the IVF lists, list by list; progress about every ``SAVE_ROWS`` rows.

    Lists are searched one at a time but aggregated and written in groups of about ``GROUP_ROWS``
    rows (rows are independent, so grouping changes no byte), and a group's host-side write
    overlaps the next group's GPU work.
    """
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, searcher.nlist, world_size + 1).astype(int)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    first = lo if state["done"] is None else state["done"]
    sizes = searcher.counts.cpu().numpy()
    group: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    pending, since_save, writing = 0, 0, None

    def write(where: np.ndarray, tok: np.ndarray, p: np.ndarray) -> None:
        ids[where], probs[where] = tok, p

    with ThreadPoolExecutor(1) as pool, tqdm(total=int(sizes[lo:hi].sum()), initial=int(sizes[lo:first].sum()),
                                             desc=f"targets rank {rank}", unit="row") as bar:
        for lst, rows, dist, nbr in searcher.self_search(s.k + 1, first, hi):
            group.append((rows, dist, nbr))
            pending += len(rows)
            if pending < GROUP_ROWS and lst != hi - 1:
                continue
            rows, dist, nbr = (torch.cat(t) for t in zip(*group))
            tok, p, kept = _targets(s, values, rows, dist, nbr)
            if writing is not None:
                writing.result()
            writing = pool.submit(write, rows.cpu().numpy(), tok, p)
            state = _with_mass(state, kept)
            since_save += pending
            if since_save >= SAVE_ROWS or lst == hi - 1:
                writing.result()
                state = {**state, "done": lst + 1}
                _save(out, rank, state, (ids, probs))
                since_save = 0
            bar.update(pending)
            group, pending = [], 0
    if first >= hi:  # nothing left (or an empty share): still leave a record for the manifest
        _save(out, rank, {**state, "done": hi}, (ids, probs))


def mass_curve(datastore: str | Path, settings: TargetSettings, rows: int = 4096, seed: int = 0,
               backend: str = "auto", device: str = "auto") -> dict[int, dict[str, float]]:
    """How much kNN mass the K most probable tokens keep, on a seeded sample of rows.

    For K in powers of two up to k: the mean kept mass and the share of rows keeping >= 99%.
    This is how the default K was chosen; run it on your own corpus with ``mlpmem targets --mass-curve``.
    """
    from mlpmem_lightning.knn.search import resolve_backend

    ds = Datastore(datastore)
    check_settings(settings, len(ds))
    dev = pick_device(device)
    backend = resolve_backend(settings.index, backend, dev)
    if backend != "clustered":
        ensure_index(ds.path, settings)
    searcher = _searcher(ds, settings, backend, dev)
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
