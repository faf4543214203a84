"""Kill-and-resume helper: run Python code in a child, SIGKILL it once its progress file shows progress."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_after_progress(code: str, progress: Path, done_at: int, timeout: float = 120.0) -> None:
    """Start ``code``; SIGKILL it as soon as ``progress`` (a JSON file with "done") reaches ``done_at``."""
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + timeout
    while time.time() < deadline and not (progress.is_file() and json.loads(progress.read_text())["done"] >= done_at):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
