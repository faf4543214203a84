"""`mlpmem targets`: the sparse kNN distribution of every datastore row (what MLP Memory imitates).

For each row: search k+1 neighbours, drop the row itself by id, weight the remaining k by
softmax(-d/T), sum per token, keep the K most probable tokens and renormalise them to 1.
Output (DESIGN.md): ``ids.npy`` int32 [N, K] (-1 pads), ``probs.npy`` float16 [N, K]
(0 pads) and the manifest, which also records how much mass the K tokens kept before
renormalisation.

One write path for every search backend: the searcher's ``self_search`` yields its units (row
chunks of ``settings.chunk``, or IVF lists for the clustered backend), ranks take contiguous ranges
of units, and each rank records its progress per unit, so a killed run resumes and ends
byte-identical to an uninterrupted one on any number of ranks. Reuse, the lock, the marker and the
manifest are :class:`~mlpmem_lightning.core.writer.ArtifactWriter`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.distributed import pick_device
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.writer import ArtifactWriter, BackgroundSaves
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.distributions import aggregate_tokens, drop_self, neighbour_weights
from mlpmem_lightning.knn.index import build_index
from mlpmem_lightning.knn.search import Backend, Searcher, open_searcher, resolve_backend
from mlpmem_lightning.knn.search.clustered import default_nlist
from mlpmem_lightning.knn.settings import INDEXES, TargetSettings

__all__ = ["KIND", "KNNTargets", "TargetSettings", "build_targets", "default_nlist", "ensure_index", "mass_curve"]
log = logging.getLogger(__name__)
KIND = "knn_targets"
GROUP_ROWS = 1 << 16  # rows aggregated and written together (units are grouped up to it)
SAVE_ROWS = 1 << 20  # rows between progress records (flushed behind the search: BackgroundSaves) ...
SAVE_SECONDS = 60.0  # ... or seconds, whichever comes first


def ensure_index(datastore: str | Path, s: TargetSettings) -> None:
    """Build the faiss index the settings ask for next to the datastore, or reuse it (flat needs none)."""
    if s.index == "flat":
        return
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
    if s.index not in INDEXES:
        raise UserError(f"unknown index {s.index!r}: choose {', '.join(INDEXES[:-1])} or {INDEXES[-1]}")
    if s.chunk < 1:
        raise UserError(f"--chunk {s.chunk} must be >= 1")


def _prepare(datastore: str | Path, settings: TargetSettings, device: str) -> tuple[Datastore, Backend, torch.device]:
    """The datastore, the resolved backend (``settings.backend``; auto by index and device) and the device."""
    ds = Datastore(datastore)
    check_settings(settings, len(ds))
    dev = pick_device(device)
    return ds, resolve_backend(settings.index, settings.backend, dev), dev


def build_targets(datastore: str | Path, out: str | Path, settings: TargetSettings, device: str = "auto",
                  rank: int = 0, world_size: int = 1, barrier: Callable[[], None] = lambda: None
                  ) -> dict[str, Any] | None:
    """Build (resume, or reuse) the kNN targets of every row of ``datastore``; the manifest (rank 0) or None.

    Several ranks (``world_size``) split the searcher's self-search units; the files are those of one rank.
    """
    ds, backend, dev = _prepare(datastore, settings, device)
    out = Path(out)
    identity = {"settings": settings.identity(), "datastore_fingerprint": ds.fingerprint, "backend": backend.name,
                **backend.identity(dev)}
    writer = ArtifactWriter(out, KIND, identity, "holds targets of another datastore, settings or backend",
                            inputs=(datastore,), rank=rank, world_size=world_size, barrier=barrier)
    if (manifest := writer.reuse()) is not None:
        return manifest
    if rank == 0 and backend.faiss_index:
        ensure_index(ds.path, settings)  # the other ranks wait at the writer's barrier

    def allocate() -> None:
        for name, dtype in (("ids.npy", np.int32), ("probs.npy", np.float16)):
            artifacts.allocate_npy(out / name, dtype, (len(ds), settings.keep)).flush()

    phases = {"start": time.monotonic()}
    with writer.open(allocate):
        ids, probs = (np.load(out / name, mmap_mode="r+") for name in ("ids.npy", "probs.npy"))
        searcher = open_searcher(ds, replace(settings, backend=backend.name), dev)
        values = torch.from_numpy(np.asarray(ds.values, dtype=np.int64)).to(dev)
        phases["searcher"] = time.monotonic()
        _fill(searcher, values, settings, ids, probs, writer)
        phases["search"] = time.monotonic()
        manifest = writer.finish(lambda: _fields(ds, settings, backend, searcher, writer, identity),
                                 files=("ids.npy", "probs.npy"))
        phases["finish"] = time.monotonic()
        _log_phases(out, phases)
        return manifest


def _log_phases(out: Path, phases: dict[str, float]) -> None:
    """One line of where a targets run's time went (the study's stage time is their sum, with the T rule before):
    output allocated and searcher built (centroids, keys to the device), the search loop, the manifest (the ids'
    hash) and the wait for the other ranks."""
    names, stamps = list(phases), list(phases.values())
    spans = (f"{n} {b - a:.1f} s" for n, a, b in zip(names[1:], stamps, stamps[1:]))
    log.info("targets %s: %s", out.name, ", ".join(spans))


def _fields(ds: Datastore, s: TargetSettings, backend: Backend, searcher: Searcher, writer: ArtifactWriter,
            identity: dict[str, Any]) -> dict[str, Any]:
    """The manifest besides the identity (rank 0, once every rank is done)."""
    done = writer.all_progress()
    return {
        "datastore": str(ds.path), "N": len(ds), "k": s.k, "temperature": s.temperature, "K": s.keep,
        "index": s.index, "searcher": type(searcher).__name__,
        "mass_kept_mean": sum(p["mass_sum"] for p in done) / len(ds), "mass_kept_min": min(p["mass_min"] for p in done),
        "search_inputs": _search_inputs(ds.path, s, backend, searcher),
        "fingerprint": artifacts.hash_json({**identity, "ids": artifacts.hash_file(writer.out / "ids.npy")}),
    }


def _search_inputs(datastore: Path, s: TargetSettings, backend: Backend, searcher: Searcher) -> dict[str, Any]:
    """What the neighbours came from besides the keys: the stored faiss index's sha256 (backends that read it),
    or what the searcher itself reports (the clustered backend's centroids); exact search has no other input."""
    inputs = searcher.search_inputs()
    entry = Datastore(datastore).manifest.get("indexes", {}).get(s.index)
    if backend.faiss_index and s.index != "flat" and entry:
        inputs = {**inputs, "index_sha256": entry["sha256"]}
    return inputs


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


def _fill(searcher: Searcher, values: torch.Tensor, s: TargetSettings, ids: np.ndarray, probs: np.ndarray,
          writer: ArtifactWriter) -> None:
    """This rank's share of the self-search units; progress about every ``SAVE_ROWS`` rows or ``SAVE_SECONDS``.

    Units are searched one at a time but aggregated and written in groups of about ``GROUP_ROWS``
    rows (rows are independent, so grouping changes no byte). A group's host-side write overlaps the next
    group's search, and a progress record's flush overlaps the searches after it (``BackgroundSaves``).
    """
    sizes = searcher.units(s.chunk)
    bounds = np.linspace(0, len(sizes), writer.world_size + 1).astype(int)
    lo, hi = int(bounds[writer.rank]), int(bounds[writer.rank + 1])
    state = writer.progress() or {"done": lo, "mass_sum": 0.0, "mass_min": 1.0}
    first = state["done"]
    group: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    pending, since_save, saved_at, writing = 0, 0, time.monotonic(), None

    def write(where: np.ndarray, tok: np.ndarray, p: np.ndarray) -> None:
        ids[where], probs[where] = tok, p

    desc = "targets" if writer.world_size == 1 else f"targets rank {writer.rank}"
    with ThreadPoolExecutor(1) as pool, BackgroundSaves(writer, (ids, probs)) as saves, \
            tqdm(total=int(sizes[lo:hi].sum()), initial=int(sizes[lo:first].sum()), desc=desc, unit="row") as bar:
        for unit, rows, dist, nbr in searcher.self_search(s.k + 1, first, hi, s.chunk):
            group.append((rows, dist, nbr))
            pending += len(rows)
            if pending < GROUP_ROWS and unit != hi - 1:
                continue
            rows, dist, nbr = (torch.cat(t) for t in zip(*group))
            tok, p, kept = _targets(s, values, rows, dist, nbr)
            if writing is not None:
                writing.result()
            writing = pool.submit(write, rows.cpu().numpy(), tok, p)
            state = _with_mass(state, kept)
            since_save += pending
            if unit == hi - 1:
                writing.result()
                saves.last({**state, "done": unit + 1})
            elif (since_save >= SAVE_ROWS or time.monotonic() - saved_at >= SAVE_SECONDS) \
                    and saves.start({**state, "done": unit + 1}, after=writing):
                since_save, saved_at = 0, time.monotonic()
            bar.update(pending)
            group, pending = [], 0
    if first >= hi:  # nothing left (or an empty share): still leave a record for the manifest
        writer.save_progress({**state, "done": hi}, (ids, probs))


def mass_curve(datastore: str | Path, settings: TargetSettings, rows: int = 4096, seed: int = 0,
               device: str = "auto") -> dict[int, dict[str, float]]:
    """How much kNN mass the K most probable tokens keep, on a seeded sample of rows.

    For K in powers of two up to k: the mean kept mass and the share of rows keeping >= 99%.
    This is how the default K was chosen; run it on your own corpus with ``mlpmem targets --mass-curve``.
    """
    ds, backend, dev = _prepare(datastore, settings, device)
    if backend.faiss_index:
        ensure_index(ds.path, settings)
    searcher = open_searcher(ds, replace(settings, backend=backend.name), dev)
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
        self.manifest = artifacts.read_manifest(self.path, KIND, required=("N", "K", "datastore",
                                                                             "datastore_fingerprint", "fingerprint"))
        self.ids = artifacts.load_npy(self.path / "ids.npy")
        self.probs = artifacts.load_npy(self.path / "probs.npy")
        shape = (self.manifest["N"], self.manifest["K"])
        if self.ids.shape != shape or self.probs.shape != shape:
            raise UserError(f"{self.path}: arrays do not match the manifest {shape}: delete it and re-run targets")
