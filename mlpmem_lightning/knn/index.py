"""faiss indexes over a datastore's keys: build once, record in the manifest, verify on load.

An index file lives next to the keys (``index_<kind>.faiss``) and is recorded in the datastore
manifest under ``indexes``: its settings, ``ntotal`` and sha256. Loading checks both, so an index
left behind by an older datastore (or a half-copied file) is refused instead of silently
returning neighbours of other keys. Building goes through :func:`~mlpmem_lightning.core.writer.derived_file`:
the datastore's lock, the file written to a temporary name and renamed, then the manifest re-written
with the entry, so a crash leaves the old state.
Do not call :func:`build_index` while holding the datastore's lock yourself (flock is per open
file, so the second acquisition in the same process fails).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.writer import derived_file
from mlpmem_lightning.knn.datastore import KIND as DATASTORE
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.settings import INDEXES as KINDS

log = logging.getLogger("mlpmem_lightning.knn.search")
# The command a user runs to (re)build an index; quoted by every "missing/stale index" error.
BUILD_COMMAND = "mlpmem targets --datastore {dir} --index {kind}"


def index_path(datastore_dir: str | Path, kind: str) -> Path:
    return Path(datastore_dir) / f"index_{kind}.faiss"


def key_chunks(keys: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 block) over the keys; refuses NaN/inf so no search ever ranks a NaN."""
    for start in range(0, len(keys), chunk):
        block = np.asarray(keys[start:start + chunk], dtype=np.float32)
        if not np.isfinite(block).all():
            raise nonfinite_key(start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0]))
        yield start, block


def nonfinite_key(row: int) -> UserError:
    """The one-line error for a NaN/inf key row, wherever it is found (host chunks here, or on the device)."""
    return UserError(f"datastore key row {row} is NaN/inf (float16 overflow?): rebuild the datastore "
                     "with a decoder whose hidden states fit float16")


def check_settings(kind: str, n: int, d: int, nlist: int, m: int, nbits: int, train_size: int) -> None:
    """One-line errors for settings faiss would reject with a C++ traceback (or silently degrade on)."""
    if kind not in KINDS:
        raise UserError(f"unknown index {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "flat":
        return
    sample = min(train_size, n)
    if not 1 <= nlist <= n:
        raise UserError(f"nlist={nlist} must be in [1, N={n}]: use fewer lists for this datastore")
    if sample < nlist:
        raise UserError(f"train_size={train_size} gives {sample} training keys < nlist={nlist}: raise train_size")
    if kind == "ivfpq":
        if m < 1 or d % m:
            raise UserError(f"m={m} must divide d={d} for an IVFPQ index: pick a divisor of {d}")
        if not 1 <= nbits <= 16:
            raise UserError(f"nbits={nbits} must be in [1, 16]")
        if sample < 2 ** nbits:
            raise UserError(f"IVFPQ with nbits={nbits} needs >= {2 ** nbits} training keys, got {sample}")


def _entry_settings(kind: str, nlist: int, m: int, nbits: int, train_size: int, seed: int) -> dict[str, Any]:
    """The settings that determine an index's contents (others recorded as None)."""
    ivf, pq = kind != "flat", kind == "ivfpq"
    return {"nlist": nlist if ivf else None, "m": m if pq else None, "nbits": nbits if pq else None,
            "train_size": train_size if ivf else None, "seed": seed if ivf else None}


def _new_index(kind: str, d: int, nlist: int, m: int, nbits: int) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatL2(d)
    quantizer = faiss.IndexFlatL2(d)
    if kind == "ivfflat":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits)
    return index  # faiss's Python wrapper keeps a reference to the quantizer


def train_sample(keys: np.ndarray, train_size: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of at most ``train_size`` rows, read in row order (memmap friendly)."""
    n = len(keys)
    if train_size >= n:
        return np.asarray(keys, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False, shuffle=False))
    return np.asarray(keys[rows], dtype=np.float32)


def _build(keys: np.ndarray, kind: str, nlist: int, m: int, nbits: int, train_size: int, seed: int,
           add_chunk: int) -> faiss.Index:
    index = _new_index(kind, keys.shape[1], nlist, m, nbits)
    if kind != "flat":
        sample = train_sample(keys, train_size, seed)
        if not np.isfinite(sample).all():
            raise UserError("the datastore's keys hold NaN/inf (float16 overflow?): rebuild the datastore "
                            "with a decoder whose hidden states fit float16")
        log.info("training %s index (nlist=%d) on %d keys", kind, nlist, len(sample))
        index.cp.seed = seed  # the coarse k-means
        if kind == "ivfpq":
            index.pq.cp.seed = seed
        index.train(sample)
    for start, block in key_chunks(keys, add_chunk):
        index.add(block)
        log.info("%s index: added %d/%d keys", kind, start + len(block), len(keys))
    return index


def flat_in_memory(keys: np.ndarray, chunk: int = 1_000_000) -> faiss.Index:
    """An ``IndexFlatL2`` over the keys, built on the fly (exact search needs no file)."""
    index = faiss.IndexFlatL2(keys.shape[1])
    for _, block in key_chunks(keys, chunk):
        index.add(block)
    return index


def build_index(datastore_dir: str | Path, kind: str = "ivfpq", nlist: int = 4096, m: int = 64, nbits: int = 8,
                train_size: int = 1_000_000, seed: int = 0, add_chunk: int = 1_000_000) -> dict[str, Any]:
    """Build (or reuse) ``index_<kind>.faiss`` next to the keys; returns its manifest entry."""
    datastore_dir = Path(datastore_dir)
    ds = Datastore(datastore_dir)
    check_settings(kind, len(ds), ds.keys.shape[1], nlist, m, nbits, train_size)
    settings = _entry_settings(kind, nlist, m, nbits, train_size, seed)
    path = index_path(datastore_dir, kind)

    def recorded() -> dict[str, Any] | None:  # read under the lock: another writer may have finished
        return Datastore(datastore_dir).manifest.get("indexes", {}).get(kind)

    def make(tmp: Path) -> dict[str, Any]:
        index = _build(Datastore(datastore_dir).keys, kind, nlist, m, nbits, train_size, seed, add_chunk)
        faiss.write_index(index, str(tmp))
        log.info("wrote %s (%d keys)", path, index.ntotal)
        return {"file": path.name, "ntotal": int(index.ntotal), "faiss_version": faiss.__version__}

    def record(entry: dict[str, Any]) -> None:
        manifest = Datastore(datastore_dir).manifest
        fields = {k: v for k, v in manifest.items() if k != "kind"}
        fields["indexes"] = {**manifest.get("indexes", {}), kind: entry}
        artifacts.write_manifest(datastore_dir, DATASTORE, fields)

    want = {**settings, "datastore_fingerprint": ds.fingerprint, "ntotal": len(ds)}
    return derived_file(datastore_dir, path, want, recorded, make, record, logger=log)


def load_index(datastore_dir: str | Path, kind: str) -> faiss.Index:
    """Read an index back, refusing one that does not belong to this datastore's keys."""
    if kind not in KINDS:
        raise UserError(f"unknown index {kind!r}: choose one of {', '.join(KINDS)}")
    ds = Datastore(datastore_dir)
    manifest, keys = ds.manifest, ds.keys
    hint = BUILD_COMMAND.format(dir=datastore_dir, kind=kind)
    entry = manifest.get("indexes", {}).get(kind)
    path = index_path(datastore_dir, kind)
    if not entry or not path.is_file():
        raise UserError(f"datastore {datastore_dir} has no {kind} index: build it with `{hint}`")
    recorded = {"datastore_fingerprint": entry.get("datastore_fingerprint"), "ntotal": entry.get("ntotal"),
                "sha256": entry.get("sha256")}
    problems = artifacts.diff(recorded, {"datastore_fingerprint": manifest.get("fingerprint"), "ntotal": len(keys)})
    if not problems:  # the file's hash only once the entry belongs to these keys
        problems = artifacts.diff(recorded, {"sha256": artifacts.hash_file(path)})
    if problems:
        raise UserError(f"index file {path} does not match its datastore (recorded != found: {problems}): "
                        f"rebuild with `{hint}`")
    index = faiss.read_index(str(path))
    if index.ntotal != len(keys) or index.d != keys.shape[1]:
        raise UserError(f"index file {path} does not match its datastore (index holds {index.ntotal} x {index.d} "
                        f"keys, the datastore {len(keys)} x {keys.shape[1]}): rebuild with `{hint}`")
    return index
