"""Workers of a study that share an ``out`` take turns: on an artifact, and on the queue of grid points.

Several sweep workers (same spec, same storage) run trials at once, and trials share artifacts: two memory
sizes on one decoder need the same decoder, datastore and targets. Each stage's own writer lock refuses a
second writer at once ("is being written by another process"), which is right for two users and wrong
for two workers of one study: the second worker must wait until the first has finished, then reuse it.
So a trial holds ``<out>/.locks/<the artifact's path under out>/.lock`` (``artifact_lock(wait=True)``)
while it builds, resumes or reuses an artifact, and the stage's own lock is never contended.

The queue lock makes "is a grid point waiting? then take it" one step, so a worker never opens a trial
after another worker emptied the queue. Both are ``flock`` locks: the kernel drops them when a worker
dies, and they hold across processes of one host or of a file system with working ``flock``.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlpmem_lightning.core.artifacts import artifact_lock, hash_json

LOCKS = ".locks"


def lock_dir(out: Path, path: Path) -> Path:
    """Where the workers of ``out`` lock ``path``: its path under ``out``, or a hash of it for a path outside."""
    out, path = Path(out).resolve(), Path(path).resolve()
    try:
        name = path.relative_to(out).as_posix()
    except ValueError:
        name = f"outside-{path.name}-{hash_json(str(path))[:8]}"
    return out / LOCKS / name


@contextmanager
def waiting_for(out: Path, path: Path) -> Iterator[Path]:
    """Hold ``path`` among the workers of ``out``, waiting as long as another worker holds it."""
    with artifact_lock(lock_dir(out, path), wait=True):
        yield path


class QueueLock:
    """The lock on a study's queue (``<out>/.locks/queue-<study>``): ``acquire``, then ``release`` once the
    trial is popped (``release`` twice is harmless)."""

    def __init__(self, out: Path, study: str):
        path = Path(out) / LOCKS / f"queue-{study}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fd = path, None

    def acquire(self) -> QueueLock:
        if self.fd is None:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> QueueLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class Users:
    """The artifacts a trial is using: a shared ``flock`` on ``<lock dir>/users`` per artifact, held from the moment
    it is built or reused (under its build lock) until the trial lets it go.

    ``cleanup: true`` deletes a trial's datastore and targets when it ends; with several workers another trial (a
    second memory size on the same decoder) may still be evaluating against them. A trial may delete an artifact
    only while no other trial holds it (:meth:`sole`); otherwise the last user deletes it."""

    def __init__(self, out: Path):
        self.out, self.fds = Path(out), {}

    def _file(self, path: Path) -> Path:
        where = lock_dir(self.out, path)
        where.mkdir(parents=True, exist_ok=True)
        return where / "users"

    def hold(self, path: Path) -> None:
        if path not in self.fds:
            fd = os.open(self._file(path), os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            self.fds[path] = fd

    def release(self, path: Path) -> None:
        if (fd := self.fds.pop(path, None)) is not None:
            os.close(fd)

    def release_all(self) -> None:
        for path in list(self.fds):
            self.release(path)

    @contextmanager
    def sole(self, path: Path) -> Iterator[bool]:
        """Whether no other trial holds ``path`` (this one's own hold released first); others wait meanwhile."""
        self.release(path)
        fd = os.open(self._file(path), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            yield alone
        finally:
            os.close(fd)


class Slots:
    """At most ``n`` trials of a study hold a datastore and its targets at once (the spec's ``stores_at_once``).

    With ``cleanup: true`` a trial's datastore and targets live from its datastore stage to its end, and with
    ``--workers N`` N of them may exist at once: on the H200's 64 GiB disk four 12M-row studies' stores (up to
    17 GB each) filled it. A slot is an exclusive ``flock`` on ``<out>/.locks/store-slot-<i>``: taken before the
    datastore stage, given back when the trial ends (or its worker dies: the kernel drops the lock). A trial that
    finds every slot taken waits, polling, while the others keep training their decoders."""

    POLL = 2.0  # seconds between tries while every slot is taken

    def __init__(self, out: Path, n: int | None):
        self.dir, self.n, self.fd = Path(out) / LOCKS, n, None

    def acquire(self, on_wait=lambda: None) -> None:
        """Take a free slot (no-op without a limit, or when held); ``on_wait`` is called once if none is free."""
        if self.n is None or self.fd is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            for i in range(self.n):
                fd = os.open(self.dir / f"store-slot-{i}", os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self.fd = fd
                return
            if not waited:
                on_wait()
                waited = True
            time.sleep(self.POLL)

    def claim(self, dirs: list[Path], need: int) -> None:
        """Write into the held slot which stores this trial writes and their whole size (read by :meth:`others`)."""
        if self.fd is not None:
            note = json.dumps({"dirs": [str(d) for d in dirs], "need": need}).encode()
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, note, 0)

    def others(self) -> list[dict]:
        """The notes of the slots other trials hold now (a slot that can be locked is free, and is let go at once)."""
        notes = []
        for i in range(self.n or 0):
            path = self.dir / f"store-slot-{i}"
            if not path.exists():
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                if self.fd is not None and os.fstat(fd).st_ino == os.fstat(self.fd).st_ino:
                    continue  # this trial's own slot
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    continue  # free: nobody holds it
                except BlockingIOError:
                    pass
                raw = os.pread(fd, 1 << 16, 0)
                notes.append(json.loads(raw) if raw else {"dirs": [], "need": 0})
            finally:
                os.close(fd)
        return notes

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
