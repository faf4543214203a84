"""`mlpmem --help` is fast because it imports no torch (issue #16 item 3; no timing here: what is imported), and
every subcommand's help shows its defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import sys\nfrom mlpmem_lightning.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         "print('IMPORTED', ' '.join(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")


def run_help(*argv: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_top_level_help_imports_no_torch():
    out = run_help("--help")
    assert "datastore" in out and "fit" in out
    assert out.strip().splitlines()[-1] == "IMPORTED"  # none of torch, lightning, transformers


def test_subcommand_help_shows_defaults():
    from mlpmem_lightning.knn.settings import TARGETS

    out = " ".join(run_help("targets", "--help").split())  # help wraps lines
    assert f"(default: {TARGETS.k})" in out and f"(default: {TARGETS.index})" in out
