"""Paths every test finds the same way, whatever the working directory."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
EXP = ROOT / "experiments"
SWEEPS = ROOT / "sweeps"
FIXTURES = ROOT / "tests" / "fixtures"
