"""The configs and sweep specs shipped with the package, found with or without a checkout.

They live at the top of the repository (``experiments/``, ``sweeps/``: DESIGN.md's layout) and are
installed as the package data ``mlpmem_lightning.experiments`` and ``mlpmem_lightning.sweeps``
(``pyproject.toml`` maps the folders), so a wheel install finds the same files an editable one does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _shipped(name: str) -> Path:
    """The installed package data, or the checkout's folder when the package runs from a source tree that was
    never installed (``PYTHONPATH=.``), where no import system maps the folder into the package."""
    try:
        return Path(str(files(f"mlpmem_lightning.{name}")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / name


def experiments_dir() -> Path:
    """The shipped LightningCLI configs (``trainer/``, ``data/``, ``model/``)."""
    return _shipped("experiments")


def sweeps_dir() -> Path:
    """The shipped sweep specifications."""
    return _shipped("sweeps")


def resolve_shipped(path: str | Path) -> Path:
    """``path`` as given when it exists; else a shipped file named the way the repository names it.

    ``experiments/trainer/cpu.yaml`` and ``sweeps/demo.yaml`` then work from any directory, checkout or not.
    """
    path = Path(path)
    if path.exists() or path.is_absolute() or not path.parts:
        return path
    roots = {"experiments": experiments_dir, "sweeps": sweeps_dir}
    if path.parts[0] in roots:
        shipped = roots[path.parts[0]]().joinpath(*path.parts[1:])
        if shipped.exists():
            return shipped
    return path
