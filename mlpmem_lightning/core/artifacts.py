"""Artifact directories: manifest written last, atomic files, one writer at a time.

Every stage's output is a directory whose ``manifest.json`` is written last (DESIGN.md).
A directory without a manifest is incomplete: it is never read as done. Files inside are
written to a temporary name and renamed, so a crash leaves either the old file or the new
one, never half of one. How a stage builds, resumes or reuses its directory, and which
partial directories it may clear, is :mod:`mlpmem_lightning.core.writer`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
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
SAMPLE_BLOCKS, SAMPLE_BLOCK = 64, 1 << 16  # a content record reads at most 64 blocks of 64 KiB (4 MiB) per file
log = logging.getLogger(__name__)


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


def read_manifest(path: str | Path, kind: str, required: tuple[str, ...] = (), check: bool = True) -> dict[str, Any]:
    """The manifest of a finished artifact of ``kind``, holding the ``required`` keys, whose files still match
    their content records (:func:`check_files`, unless ``check`` is false); a clear error for anything else."""
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
    if not isinstance(manifest, dict):
        raise UserError(f"{mpath} holds a JSON {type(manifest).__name__}, not a manifest object: "
                        f"delete {path} and rebuild it")
    if manifest.get("kind") != kind:
        raise UserError(f"{path} holds a {manifest.get('kind')!r}, not a {kind!r}: pass a {kind} directory")
    if missing := [k for k in required if k not in manifest]:
        raise UserError(f"{mpath} lacks {', '.join(missing)}: it was edited or cut; delete {path} and rebuild it")
    if check:
        check_files(path, manifest)
    return manifest


# -- content records -------------------------------------------------------------------------------
def sample_hash(path: str | Path) -> str:
    """sha256 of the file's size and of ``SAMPLE_BLOCKS`` blocks spread evenly over it (first and last
    included); a file of at most that many blocks is hashed whole. Cheap for GB files (4 MiB read), it
    catches a file replaced, rescaled or rewritten, not a change confined to the bytes between blocks."""
    size = os.path.getsize(path)
    h = hashlib.sha256(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK:
            while block := f.read(1 << 22):
                h.update(block)
        else:
            step = (size - SAMPLE_BLOCK) / (SAMPLE_BLOCKS - 1)
            for i in range(SAMPLE_BLOCKS):
                f.seek(round(i * step))
                h.update(f.read(SAMPLE_BLOCK))
    return h.hexdigest()


def file_records(path: str | Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``: each file's size and :func:`sample_hash`, recorded when it is written."""
    return {n: {"size": os.path.getsize(Path(path) / n), "sample_sha256": sample_hash(Path(path) / n)} for n in names}


_CHECKED: dict[tuple, None] = {}  # files already checked in this process, by (path, size, mtime, inode)
_UNRECORDED: set[str] = set()


def check_files(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse an artifact whose files no longer match the manifest's content records (size, then the sampled
    hash). A manifest written before records existed is read unchecked, with one warning per directory."""
    records = manifest.get("files")
    if not isinstance(records, dict):
        if str(path) not in _UNRECORDED:
            _UNRECORDED.add(str(path))
            log.warning("%s has no content records (written by mlpmem %s): its files are not checked; rebuild it "
                        "to have them checked", path, manifest.get("mlpmem_version", "?"))
        return
    for name, want in records.items():
        file = path / name
        try:
            st = file.stat()
        except OSError:
            raise UserError(f"{file} is missing: delete {path} and rebuild it") from None
        key = (str(file.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if key in _CHECKED:
            continue
        if st.st_size != want.get("size"):
            raise UserError(f"{file} has {st.st_size} bytes but its manifest records {want.get('size')}: it was "
                            f"changed after it was written; delete {path} and rebuild it")
        if sample_hash(file) != want.get("sample_sha256"):
            raise UserError(f"{file} does not match its manifest's content hash: it was changed after it was "
                            f"written; delete {path} and rebuild it")
        _CHECKED[key] = None


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_manifest(path: str | Path, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest last and atomically: after this the artifact counts as complete."""
    manifest = {"kind": kind, "mlpmem_version": __version__, **fields}
    atomic_write_text(Path(path) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def check_out_dir(out: str | Path) -> None:
    """Refuse an ``--out`` that cannot become an artifact directory: a file, a symlink loop, or a place this
    process may not write (a read-only file system or folder). Nothing is created."""
    out = Path(out)
    try:
        out.stat()
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"--out {out} is a symlink loop: remove the link or pass another --out") from None
        raise
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory: pass a folder (new or empty)")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {existing} (read-only file system or folder): "
                        "pass an --out you can write to")


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


def allocate_npy(path: str | Path, dtype: Any, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` of ``shape``, opened as a writable memory map, with its blocks reserved on the disk.

    A memory map written past a full disk dies with SIGBUS; reserving the whole file first (``posix_fallocate``)
    turns that into ENOSPC here, which the CLI reports as one line naming ``path``.
    """
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    reserve(path)
    return arr


def reserve(path: str | Path) -> None:
    """Reserve every block of ``path`` on its file system (the allocation every memory-mapped artifact uses)."""
    size = os.path.getsize(path)
    if size == 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS):  # glibc emulates it almost everywhere; else go on
            log.debug("cannot reserve %s: %s", path, err)
            return
        raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
    finally:
        os.close(fd)


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
