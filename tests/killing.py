"""Kill-and-resume helpers: run a stage in a child process and SIGKILL it at a random point after progress.

The kill points are drawn from ``KILL_RNG``, seeded by ``$MLPMEM_KILL_SEED`` (default: a fresh seed each
run, printed), so CI explores new points over time and a failing point can be replayed exactly.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

KILL_SEED = int(os.environ.get("MLPMEM_KILL_SEED") or random.SystemRandom().randrange(2**31))
print(f"kill points: MLPMEM_KILL_SEED={KILL_SEED}")


def kill_rng(name: str) -> random.Random:
    """One reproducible stream per test, so adding a test does not move the others' kill points."""
    return random.Random(f"{KILL_SEED}:{name}")


def kill_after_progress(code: str, progress: Path, done_at: int, timeout: float = 120.0) -> None:
    """Start ``code``; SIGKILL it as soon as ``progress`` (a JSON file with "done") reaches ``done_at``."""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + timeout
    while time.time() < deadline and not (progress.is_file() and json.loads(progress.read_text())["done"] >= done_at):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_when(argv: list[str], ready: Callable[[], bool], delay: float, timeout: float = 300.0) -> int:
    """Run ``argv``; once ``ready()`` holds, wait ``delay`` seconds and SIGKILL it. Returns its process group.

    Only the process itself is killed, as the OOM killer would: children it forked (a ``datasets``
    worker pool) live on, so a rerun meets them as it would in real life. ``reap`` ends them later.
    Fails if the process ended by itself first: then no kill was tested (pick an earlier point).
    """
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive, f"{argv[3:5]} finished before the kill (MLPMEM_KILL_SEED={KILL_SEED}, delay {delay:.2f} s)"
    return proc.pid


def reap(group: int) -> None:
    """SIGKILL what is left of a killed command's process group (its orphaned children)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
