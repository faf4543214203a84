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


def test_lightning_help_is_built_once_then_read_without_importing_lightning(tmp_path, monkeypatch):
    """`mlpmem fit --help` needs Lightning to build (seconds); the second call prints the same text from the cache
    and imports none of torch, lightning, transformers."""
    monkeypatch.setenv("MLPMEM_CACHE", str(tmp_path))
    first = run_help("fit", "--help")
    assert "--trainer.max_steps" in first and first.strip().splitlines()[-1].startswith("IMPORTED ")
    again = run_help("fit", "--help")
    assert again.strip().splitlines()[-1] == "IMPORTED"
    assert again.rsplit("IMPORTED", 1)[0] == first.rsplit("IMPORTED", 1)[0]


def test_only_pure_help_requests_are_cached():
    from mlpmem_lightning.cli.help_cache import asks_for_help

    assert asks_for_help(["fit", "--help"]) and asks_for_help(["test", "--model", "KNNLM", "-h"])
    assert not asks_for_help(["fit", "--config", "x.yaml", "--help"]) and not asks_for_help(["fit"])
