"""Room for a trial's datastore and targets: a store slot, the disk check, and the stores of interrupted trials.

Taken before the datastore stage (``Stages.run_shared``). At most ``stores_at_once`` trials hold stores at once
(:class:`.locks.Slots`); each slot records its stores and their size, so a trial counts what the other slots will
still write. With ``cleanup: true`` the stores of interrupted trials (no slot, no user, no writer) are deleted
first if the room is short: a resumed study re-queues its interrupted trials after the points never started
(Optuna pops the oldest waiting trial), so their half-written stores (26 GB on the H200) would otherwise sit
beside the new ones until the disk filled. A store that still does not fit is refused in one line
(:func:`.disk.check_room`) before it is written, not found half-way through it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from mlpmem_lightning.study import disk, locks

log = logging.getLogger(__name__)


def make_room(stages: Any, with_targets: bool) -> None:
    """Take a store slot for the trial ``stages`` (a :class:`.stages.Stages`), then make and check the room."""
    spec = stages.spec
    stages.slot.acquire(lambda: log.info("%s waits for a store slot (stores_at_once: %d)", stages.tag,
                                         spec.stores_at_once))
    need = disk.store_bytes(len(stages.store.split("train")), stages.source.d_model,
                            spec.knn_settings.keep if with_targets else None)
    mine = [stages.datastore_dir, stages.targets_dir]
    stages.slot.claim(mine, need)
    others = stages.slot.others()
    reserved = sum(max(0, o["need"] - disk.allocated(*map(Path, o["dirs"]))) for o in others)
    missing = need - disk.allocated(*mine)
    if spec.cleanup and disk.free_bytes(spec.stores_dir) < missing + reserved:
        reclaim(stages, missing + reserved, {*mine, *(Path(d) for o in others for d in o["dirs"])})
    what = f"the datastore{' and targets' if with_targets else ''} of {stages.tag}"
    disk.check_room(spec.stores_dir, missing, what, reserved)


def reclaim(stages: Any, need: int, protected: set[Path]) -> None:
    """Delete other trials' datastores and targets that nobody writes or uses, oldest first, until ``need``
    bytes are free: they are rebuilt from their decoder's checkpoint if their trial runs again."""
    from mlpmem_lightning.core.artifacts import artifact_lock
    from mlpmem_lightning.core.errors import UserError

    root = stages.spec.stores_dir
    stale = [p for sub in ("targets", "datastores") if (root / sub).is_dir()
             for p in (root / sub).iterdir() if p.is_dir() and p not in protected]
    for path in sorted(stale, key=lambda p: p.stat().st_mtime if p.exists() else 0.0):
        if disk.free_bytes(root) >= need:
            return
        try:
            with artifact_lock(locks.lock_dir(stages.out, path)), stages.users.sole(path) as alone:
                if alone and path.exists():
                    size = disk.allocated(path)
                    shutil.rmtree(path)
                    log.info("%s: deleted %s (%.1f GB), the store of an interrupted trial, to make room "
                             "(cleanup: true)", stages.tag, path, size / disk.GB)
        except UserError:  # another worker is writing it
            continue
