"""The one artifact writer: reuse, resume or build a directory, with the reliability rules in one place.

Every stage that writes an artifact (token store, datastore, targets, synthetic datastores) goes through
:class:`ArtifactWriter`; files derived from a finished artifact (a faiss index, cached centroids) go
through :func:`derived_file`. The rules:

- **Reuse.** A finished artifact (its manifest) of the same identity is returned as is; another identity
  is a one-line error naming the fields that differ.
- **One writer.** Rank 0 holds the directory's lock (:func:`artifacts.artifact_lock`) while it writes.
- **Own marker.** A build writes ``in_progress.json`` (kind and identity) before anything else, so a partial
  artifact says what it is. Only a directory carrying a marker of the same kind is ever cleared (a crashed
  run, or one of other settings); a non-empty directory without one belongs to the user and is refused.
- **Inputs stay out.** An ``--out`` that is, contains or lies inside an input is refused before anything
  is written.
- **Progress per rank.** Each rank records its own ``progress.rank<r>.json`` after flushing its arrays, so
  a killed run resumes where it stopped, on any number of ranks.
- **Manifest last**, atomically; the marker goes after it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from mlpmem_lightning import __version__
from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError

log = logging.getLogger(__name__)
MARKER = "in_progress.json"


def _noop() -> None:
    pass


def check_out(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output directory that is, contains or lies inside one of the stage's inputs.

    Inputs that are not paths on this machine (a hub model name) are skipped.
    """
    target = Path(out).resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = Path(item).resolve()
        if target == source:
            where = "is"
        elif target in source.parents:
            where = "contains"
        elif source in target.parents:
            where = "lies inside"
        else:
            continue
        raise UserError(f"--out {out} {where} the input {item}: pick an --out outside every input")


def _normal(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so recorded and requested compare equal."""
    return json.loads(json.dumps(obj, default=str))


class ArtifactWriter:
    """Build-or-resume of one artifact directory ``out`` of ``kind``, shared by ``world_size`` ranks.

    ``identity`` is everything that determines the artifact's bytes; it goes into the marker, each
    progress record and the manifest. ``mismatch`` completes the sentence of the reuse error
    (``"<out> <mismatch> (recorded != requested: …)"``). Usage::

        w = ArtifactWriter(out, KIND, identity, "is a … of other settings", inputs=[src])
        if (manifest := w.reuse()) is not None:
            return manifest
        with w.open(allocate):              # rank 0: lock, marker, fresh arrays if not resuming
            state = w.progress()            # this rank's last record, or None
            ...                             # fill, w.save_progress(state, arrays) now and then
            return w.finish(lambda: fields)  # rank 0: manifest; others: None
    """

    def __init__(self, out: str | Path, kind: str, identity: dict[str, Any], mismatch: str,
                 inputs: Iterable[str | Path | None] = (), rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], None] = _noop, added: tuple[str, ...] = ()):
        self.out, self.kind, self.identity, self.added = Path(out), kind, _normal(identity), added
        self.mismatch, self.rank, self.world_size, self.barrier = mismatch, rank, world_size, barrier
        artifacts.check_out_dir(self.out)
        check_out(self.out, inputs)

    # -- reuse -----------------------------------------------------------------------------------------
    def reuse(self) -> dict[str, Any] | None:
        """The manifest of a finished artifact of this identity, None when there is none yet."""
        if not artifacts.is_complete(self.out):
            return None
        try:
            found = json.loads((self.out / artifacts.MANIFEST).read_text()).get("kind", self.kind)
        except (json.JSONDecodeError, AttributeError):
            found = self.kind  # read_manifest names what is wrong with it
        if found != self.kind:
            raise UserError(f"{self.out} holds a finished {found}, not a {self.kind}: pick another --out")
        manifest = artifacts.read_manifest(self.out, self.kind, check=False)  # another identity is the clearer error
        want = {k: v for k, v in self.identity.items() if k in manifest or k not in self.added}
        if len(want) < len(self.identity):  # written before these identity fields existed
            log.warning("%s predates the identity fields %s: reused without checking them", self.out,
                        ", ".join(k for k in self.identity if k not in want))
        if {k: manifest.get(k) for k in want} != want:
            raise UserError(f"{self.out} {self.mismatch} (recorded != requested: "
                            f"{artifacts.diff(manifest, want)}): choose another --out or delete it")
        artifacts.check_files(self.out, manifest)
        log.info("reusing %s %s", self.kind, self.out)
        return manifest

    # -- build -----------------------------------------------------------------------------------------
    @contextmanager
    def open(self, allocate: Callable[[], None] = _noop, resume: bool = True) -> Iterator[ArtifactWriter]:
        """Start or resume the build: rank 0 takes the lock (held until the block ends) and, unless a
        partial run of this identity can be resumed (``resume``), clears its own partial run, writes the
        marker and calls ``allocate`` (pre-allocated arrays); then every rank passes the barrier."""
        if self.rank == 0:
            self._check_owned()  # before the lock, so a refused folder is left as it was (not even a lock file)
        with artifacts.artifact_lock(self.out) if self.rank == 0 else nullcontext():
            if self.rank == 0 and not (resume and self._resumable()):
                self._start(allocate)
            self.barrier()
            yield self

    def _marker(self) -> dict[str, Any] | None:
        path = self.out / MARKER
        if not path.is_file():
            return None
        try:
            marker = json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}  # a marker it cannot read is still ours: written by this writer, cut by a crash
        return marker if isinstance(marker, dict) else {}

    def _resumable(self) -> bool:
        marker = self._marker()
        return bool(marker) and marker.get("kind") == self.kind and marker.get("identity") == self.identity \
            and marker.get("allocated") is True

    def _ours(self, name: str) -> bool:
        """The writer's own bookkeeping, which does not make a directory the user's."""
        return name == artifacts.LOCK or name == MARKER or (name.startswith(MARKER + ".") and name.endswith(".tmp"))

    def _check_owned(self) -> None:
        """Refuse a folder this writer may not clear: the user's files, or another stage's partial artifact."""
        if not self.out.is_dir():
            return
        marker = self._marker()
        if marker is None and any(not self._ours(p.name) for p in self.out.iterdir()):
            raise UserError(f"{self.out} is not empty and holds no partial {self.kind} (no {MARKER}): "
                            "pick another --out (a new or empty folder)")
        if marker and marker.get("kind") not in (None, self.kind):
            raise UserError(f"{self.out} holds a partial {marker['kind']}, not a {self.kind}: pick another --out")

    def _start(self, allocate: Callable[[], None]) -> None:
        self._check_owned()  # again under the lock: another writer may have come and gone
        self._write_marker(allocated=False)
        for p in self.out.iterdir():  # our own partial run (crashed, or of other settings): start from nothing
            if not self._ours(p.name):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        allocate()
        self._write_marker(allocated=True)

    def _write_marker(self, allocated: bool) -> None:
        record = {"kind": self.kind, "identity": self.identity, "allocated": allocated, "mlpmem_version": __version__}
        artifacts.atomic_write_text(self.out / MARKER, json.dumps(record, indent=2, sort_keys=True) + "\n")

    # -- progress --------------------------------------------------------------------------------------
    def progress_path(self, rank: int | None = None) -> Path:
        return self.out / f"progress.rank{self.rank if rank is None else rank}.json"

    def progress(self, rank: int | None = None) -> dict[str, Any] | None:
        """A rank's last progress record (this rank's by default), None if it has none of this identity."""
        path = self.progress_path(rank)
        record = json.loads(path.read_text()) if path.is_file() else None
        return record if record is not None and record.get("identity") == self.identity else None

    def save_progress(self, state: dict[str, Any], arrays: Iterable[np.ndarray] = ()) -> None:
        """Flush ``arrays`` (memory maps), then record ``state``: a record never runs ahead of the bytes."""
        for a in arrays:
            a.flush()
        artifacts.atomic_write_text(self.progress_path(), json.dumps({**state, "identity": self.identity}))

    def all_progress(self) -> list[dict[str, Any]]:
        """Every rank's record (rank 0 after the final barrier)."""
        records = [self.progress(r) for r in range(self.world_size)]
        missing = [r for r, rec in enumerate(records) if rec is None]
        if missing:
            raise RuntimeError(f"{self.out}: ranks {missing} left no progress record")
        return records

    # -- finish ----------------------------------------------------------------------------------------
    def finish(self, fields: Callable[[], dict[str, Any]], files: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """After every rank is done: rank 0 writes the manifest (identity + ``fields()`` + the content records of
        ``files``, checked by every reader: :func:`artifacts.check_files`) and drops the marker."""
        self.barrier()
        if self.rank != 0:
            return None
        records = {"files": artifacts.file_records(self.out, files)} if files else {}
        manifest = artifacts.write_manifest(self.out, self.kind, {**fields(), **records, **self.identity})
        (self.out / MARKER).unlink(missing_ok=True)
        return manifest


class BackgroundSaves:
    """Progress records flushed on their own thread, so that the work goes on while the disk syncs.

    A record's flush (``msync`` of the memory maps) waits for the disk to take every row written since the last
    one: on the H200's disk, with two targets runs at once, 8-10 s per million target rows, during which the GPU
    used to sit idle (2/3 of a 12M-row targets run). A record still never runs ahead of the bytes: it is written
    after the writes it counts have finished (``after``: the future of the last one, if they run on another
    thread) and the flush that follows them has returned. While one is being saved a new one is skipped (the next
    covers it); the last is saved in the foreground, after any still under way.
    """

    def __init__(self, writer: ArtifactWriter, arrays: tuple[np.ndarray, ...]):
        self.writer, self.arrays, self.pool, self.saving = writer, arrays, ThreadPoolExecutor(1), None

    def start(self, state: dict[str, Any], after: Future | None = None) -> bool:
        """Save ``state`` in the background once ``after`` is done; False (nothing started) while a save is still
        under way."""
        if self.saving is not None and not self.saving.done():
            return False
        if self.saving is not None:
            self.saving.result()  # a failed flush (a full disk) fails the run here

        def save() -> None:
            if after is not None:
                after.result()
            self.writer.save_progress(state, self.arrays)

        self.saving = self.pool.submit(save)
        return True

    def last(self, state: dict[str, Any]) -> None:
        if self.saving is not None:
            self.saving.result()
        self.writer.save_progress(state, self.arrays)

    def __enter__(self) -> BackgroundSaves:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)


def derived_file(owner: Path, path: Path, want: dict[str, Any], recorded: Callable[[], dict[str, Any] | None],
                 make: Callable[[Path], dict[str, Any]], record: Callable[[dict[str, Any]], None],
                 wait: bool = False, logger: logging.Logger = log) -> dict[str, Any]:
    """A file derived from the finished artifact ``owner`` (a faiss index, cached centroids): reuse or (re)make it.

    Under ``owner``'s lock (``wait``: queue behind another writer instead of failing), the file is reused when
    ``recorded()`` matches ``want`` and the file's sha256; else ``make(tmp)`` writes it to a temporary name
    (returning extra record fields), it is renamed into place, and ``record(...)`` stores its description
    (``want`` + extras + sha256 + package version) last. Returns that description.
    """
    with artifacts.artifact_lock(owner, wait=wait):
        have = recorded()
        if have is not None and path.is_file():
            stale = artifacts.diff(have, want) or artifacts.diff(have, {"sha256": artifacts.hash_file(path)})
            if not stale:
                logger.info("reusing %s", path)
                return have
            logger.info("rebuilding %s (recorded != wanted: %s)", path, stale)
        tmp = artifacts.tmp_path(path)
        extra = make(tmp)
        artifacts.fsync_rename(tmp, path)
        description = {**want, **extra, "sha256": artifacts.hash_file(path), "mlpmem_version": __version__}
        record(description)
        return description
