"""Will a trial's datastore and targets fit on the disk? Asked before they are written.

A datastore and its targets are the largest files of a study (12M rows at width 320 with K=128: 7.7 GB of
keys, 9.2 GB of targets), and their arrays are reserved whole when they are created (``allocate_npy``). A disk
that cannot hold them used to fail the trial with ENOSPC part-way through, after its decoder had trained, and
with several workers it failed the other trials' writes too. Checked first, it is one line that names the fix.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mlpmem_lightning.core.errors import UserError

GB = 1e9


def store_bytes(rows: int, width: int, keep: int | None) -> int:
    """Bytes of a datastore (float16 keys [rows, width], int32 values) and, with ``keep``, its targets (int32 ids
    and float16 probabilities [rows, keep])."""
    return rows * (2 * width + 4) + (rows * keep * 6 if keep else 0)


def allocated(*paths: Path) -> int:
    """Bytes already on the disk under ``paths`` (a resumed stage needs only the rest)."""
    return sum(f.stat().st_blocks * 512 for p in paths if p.exists() for f in p.rglob("*") if f.is_file())


def existing(where: Path) -> Path:
    """``where`` or its nearest existing parent (the file system a directory not yet made will be on)."""
    return next((p for p in [where, *where.parents] if p.exists()), Path("."))


def free_bytes(where: Path) -> int:
    return shutil.disk_usage(existing(where)).free


def check_room(where: Path, need: int, what: str, reserved: int = 0) -> None:
    """Refuse, in one line, to start writing ``need`` bytes under ``where`` when its file system has less free than
    that plus ``reserved`` (what other trials' stores, already started, will still write)."""
    free = free_bytes(where)
    if need + reserved > free:
        others = f" besides the {reserved / GB:.1f} GB other trials' stores will still write" if reserved else ""
        raise UserError(f"{what} need {need / GB:.1f} GB{others} and {existing(where)} has {free / GB:.1f} GB free: "
                        "free some space, or set the spec's stores_at_once lower (fewer trials hold a datastore at "
                        "once)")
