"""Artifact directories: manifest written last, atomic files, one writer at a time.

Every stage's output is a directory whose ``manifest.json`` is written last (DESIGN.md).
A directory without a manifest is incomplete: it is never read as done. Files inside are
written to a temporary name and renamed, so a crash leaves either the old file or the new
one, never half of one. How a stage builds, resumes or reuses its directory, and which
partial directories it may clear, is :mod:`mlpmem_lightning.core.writer`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlpmem_lightning import __version__
from mlpmem_lightning.core.errors import UserError

MANIFEST = "manifest.json"
LOCK = ".lock"


def hash_json(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def hash_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in chunks so large arrays never load whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def diff(have: dict[str, Any], want: dict[str, Any], prefix: str = "") -> str:
    """The fields of ``want`` that ``have`` holds differently, as ``name: have != want`` (nested dicts as ``a.b``).

    Mismatch messages name both sides with it: first what an artifact records, then what this run asks.
    """
    parts = []
    for key, b in want.items():
        a = have.get(key) if isinstance(have, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            if nested := diff(a, b, f"{prefix}{key}."):
                parts.append(nested)
        elif a != b:
            parts.append(f"{prefix}{key}: {a!r} != {b!r}")
    return ", ".join(parts)


def read_manifest(path: str | Path, kind: str) -> dict[str, Any]:
    """The manifest of a finished artifact of ``kind``; a clear error for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{kind} {path} does not exist: build it first (see `mlpmem --help`)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise UserError(
            f"{kind} {path} is incomplete (no {MANIFEST}): re-run the command that builds it to resume"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{mpath} is not valid JSON ({err}): delete {path} and rebuild it") from None
    if manifest.get("kind") != kind:
        raise UserError(f"{path} holds a {manifest.get('kind')!r}, not a {kind!r}: pass a {kind} directory")
    return manifest


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_manifest(path: str | Path, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest last and atomically: after this the artifact counts as complete."""
    manifest = {"kind": kind, "mlpmem_version": __version__, **fields}
    atomic_write_text(Path(path) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def tmp_path(path: Path) -> Path:
    """A temporary name of this process for ``path``: two writers of the same file never share one."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = tmp_path(path)
    tmp.write_text(text)
    fsync_rename(tmp, path)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    tmp = tmp_path(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    fsync_rename(tmp, path)


def fsync_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


_HELD_LOCKS: set[int] = set()


def _drop_locks_in_child() -> None:
    """A forked child must not keep the parent's artifact locks.

    ``flock`` belongs to the open file, which a fork shares. ``datasets.map`` forks a worker pool and
    a manager; when the parent is SIGKILLed they live on (blocked on their queues), and with the
    lock's fd they would hold the artifact locked forever. Closing it in the child leaves the lock
    with the parent alone, so the kernel frees it when the parent dies.
    """
    for fd in _HELD_LOCKS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


@contextmanager
def artifact_lock(path: str | Path, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on an artifact directory while writing it.

    A second writer fails at once with a clear error instead of interleaving files (``wait``: it
    waits its turn instead, for files that several ranks may want to create, e.g. cached centroids).
    The lock is released by the kernel if the process dies, so a killed run never leaves a stale lock.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{path} is being written by another process: wait for it or choose another --out"
            ) from None
        _HELD_LOCKS.add(fd)
        yield path
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def load_npy(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Open a stored array (memory-mapped); a truncated or foreign file gets a clear error."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable .npy file ({err}): delete its directory and rebuild it") from None
