"""Debian package lists for the ``apt`` corpora: refreshed when a package looks missing, privately when not root.

``apt-get download`` finds a package only in the lists ``apt-get update`` wrote; on a machine whose lists are
stale the pinned ``linux-doc-6.12`` looks missing (issue #15). A user who is not root cannot refresh
``/var/lib/apt/lists``, so the lists go to ``<cache>/apt-lists`` (``-o Dir::State::Lists=...``), which every
later ``apt-get download`` then reads.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from mlpmem_lightning.core.errors import UserError

log = logging.getLogger(__name__)
DONE = "refreshed"  # marker in the private lists folder: its lists are complete


def client(what: str, cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a registry client (pip, npm, apt-get); a missing one is a one-line error naming ``what`` needs it."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise UserError(f"{what} needs `{cmd[0]}`, which is not installed here: install it or choose another "
                        "corpus") from None


def lists_dir(cache: Path) -> Path | None:
    """The private lists folder (None as root: the system's lists are refreshed in place)."""
    return None if os.geteuid() == 0 else cache / "apt-lists"


def prefix(cache: Path) -> list[str]:
    """``apt-get`` with the lists it should read: the private ones once they were refreshed."""
    lists = lists_dir(cache)
    return ["apt-get", "-o", f"Dir::State::Lists={lists}"] if lists and (lists / DONE).is_file() else ["apt-get"]


def update(what: str, cache: Path) -> None:
    """Run ``apt-get update`` (privately when not root), or stop with one line: ``what``, and why."""
    lists = lists_dir(cache)
    if lists is not None:
        (lists / "partial").mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", *(["-o", f"Dir::State::Lists={lists}"] if lists else []), "update"]
    log.info("refreshing the apt package lists: %s", " ".join(cmd))
    proc = client(what, cmd)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-2:])
        raise UserError(f"{what}: `{' '.join(cmd)}` exited {proc.returncode}: {tail}; check access to the "
                        "Debian archive")
    if lists is not None:
        (lists / DONE).touch()
