"""The architectures a study compares: one file each, one ``register`` line each (at the bottom).

To add one, write ``architectures/<name>.py`` with a subclass of :class:`Architecture` (``evaluate``, and
``fit`` if it trains anything of its own) and an instance, and register it below. The pipeline runs
the shared stages it ``needs``, the results table gets its rows, the report its fits, plots and
comparisons with the baseline, and ``objective: <name>`` makes it the sweep's objective.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.architectures.base import Architecture, Own, Score, lambda_grid_scores
from mlpmem_lightning.study.architectures.decoder import DECODER
from mlpmem_lightning.study.architectures.knn_lm import KNN_LM
from mlpmem_lightning.study.architectures.mlp_memory import MLP_MEMORY
from mlpmem_lightning.study.architectures.mlp_memory_ce import MLP_MEMORY_CE

__all__ = ["Architecture", "Own", "Score", "baseline", "get", "lambda_grid_scores", "names", "ranked", "register",
           "registered", "style", "unregister"]

_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` (after those already registered: the order of rows, legends and tables)."""
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    if arch.baseline and any(a.baseline for a in _REGISTRY.values()):
        raise ValueError(f"{arch.name!r} cannot be a second baseline (the baseline is {baseline().name!r})")
    if arch.imitates is not None and arch.imitates not in _REGISTRY:
        raise ValueError(f"{arch.name!r} imitates {arch.imitates!r}, which is not registered before it")
    _REGISTRY[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered() -> tuple[Architecture, ...]:
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Architecture:
    if name not in _REGISTRY:
        raise UserError(f"unknown architecture {name!r}: choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def baseline() -> Architecture:
    return next(a for a in _REGISTRY.values() if a.baseline)


def style(name: str) -> Architecture:
    """The registered architecture, or a grey stand-in for rows of one not registered in this process (a results
    table from elsewhere still gets a report)."""
    return _REGISTRY.get(name) or Architecture(name=name, label=name, colour="tab:gray", marker="x", module="?")


def ranked(present: Iterable[str] = ()) -> list[str]:
    """Every registered architecture in registry order, then those of ``present`` not registered here, by name.

    The order of rows, legends and tables; the analysis also seeds each architecture's bootstrap by its place,
    so a fit does not depend on which other architectures a table holds.
    """
    return list(_REGISTRY) + sorted({str(a) for a in present} - set(_REGISTRY))


register(DECODER)
register(KNN_LM)
register(MLP_MEMORY)
register(MLP_MEMORY_CE)
