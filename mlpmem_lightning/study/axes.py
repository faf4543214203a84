"""The settings a study can sweep besides sizes and seeds, and how each becomes an Optuna parameter.

A spec key that holds a list where a scalar was (``decoder_lr: [1e-3, 3e-3]``, ``knn: {k: [64, 128]}``) is
swept as a grid; a ``sampler:`` section's ``params`` give ranges a random/TPE sampler draws from. Either way
each trial runs on :func:`at` -- the spec with one value per swept setting -- so every stage's artifact key
(which hashes its whole config) separates the values, and the trial's point names them.

Every grid dimension is a real Optuna parameter with a distribution (:func:`distribution`), so
optuna-dashboard's importance, parallel-coordinate and slice plots have something to show. Size names are
categoricals over the whole ladder, not over the grid, and numbers are ranges: Optuna refuses a categorical
whose choices change within a study, and a researcher who edits the grid and resumes must not break it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from mlpmem_lightning.core.errors import UserError

SweepSpec = Any  # a study.spec.SweepSpec: spec.py imports this module, so it is not imported here (no cycle)

# parameter name -> where it lives in the spec (a top-level key, or a key of the ``knn:`` section)
AXES: dict[str, tuple[str, ...]] = {
    "decoder_lr": ("decoder_lr",), "alpha": ("alpha",), "decoder_tokens": ("decoder_tokens",),
    "memory_tokens": ("memory_tokens",), "knn.k": ("knn", "k"), "knn.keep": ("knn", "keep"),
    "knn.temperature": ("knn", "temperature"),
}
INTEGER = frozenset({"decoder_tokens", "memory_tokens", "knn.k", "knn.keep"})
LOG = frozenset({"decoder_lr", "decoder_tokens", "memory_tokens", "knn.k", "knn.keep"})  # scale-like settings
POINT = ("decoder_size", "memory_size", "seed")  # every point's keys; swept settings come after


def value(spec: SweepSpec, name: str) -> Any:
    """The spec's value of a setting (a list when it is swept; None when unset)."""
    where = AXES[name]
    return getattr(spec, where[0]) if len(where) == 1 else (getattr(spec, where[0]) or {}).get(where[1])


def swept(spec: SweepSpec) -> dict[str, list]:
    """The settings the spec sweeps as a grid (a list where a scalar was), in :data:`AXES` order."""
    return {n: list(v) for n in AXES if isinstance(v := value(spec, n), (list, tuple))}


def combos(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the swept settings' values (one empty combination when nothing is swept)."""
    grid = swept(spec)
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def at(spec: SweepSpec, point: dict[str, Any]) -> SweepSpec:
    """The spec with the point's settings set (sizes and seed are not spec values: ignored)."""
    changes: dict[str, Any] = {}
    knn = dict(spec.knn)
    for name, v in point.items():
        if name not in AXES:
            continue
        where = AXES[name]
        if len(where) == 1:
            changes[where[0]] = v
        else:
            knn[where[1]] = v
    return dataclasses.replace(spec, **changes, knn=knn)


def validate(spec: SweepSpec) -> list[SweepSpec]:
    """The scalar specs that stand for every swept value (each value once, the others at their first), or
    ``[]`` when nothing is swept; a swept key must hold a non-empty list of numbers."""
    grid = swept(spec)
    for name, values in grid.items():
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise UserError(f"{name} {values!r}: a swept setting is a non-empty list of numbers")
    if not grid:
        return []
    first = {n: v[0] for n, v in grid.items()}
    return [at(spec, {**first, name: v}) for name, values in grid.items() for v in values]


def check_ranges(spec: SweepSpec) -> None:
    """A sampler's ``params``: known settings, ``low <= high`` numbers, ``low > 0`` when ``log``."""
    if spec.ranges and spec.sampler == "grid":
        raise UserError("sampler params (ranges) need a sampler: write sampler: {name: tpe, n_trials: N, params: …}")
    for name, r in spec.ranges.items():
        if name not in AXES:
            raise UserError(f"sampler param {name!r}: choose from {', '.join(AXES)}")
        if name in swept(spec):
            raise UserError(f"{name} is both a list and a sampler range: give one of them")
        if not isinstance(r, dict) or set(r) - {"low", "high", "log"} or not {"low", "high"} <= set(r):
            raise UserError(f"sampler param {name}: {r!r} must be {{low: X, high: Y, log: true|false}}")
        low, high = r["low"], r["high"]
        if not all(isinstance(x, (int, float)) for x in (low, high)) or low > high or (r.get("log") and low <= 0):
            raise UserError(f"sampler param {name}: low {low!r} and high {high!r} must be numbers with low <= high "
                            "(and low > 0 with log: true)")


def distribution(name: str, values: list[Any]):
    """The Optuna distribution of a point key: categoricals over the whole ladder for sizes, else a range
    spanning ``values`` (a range may change between runs; a categorical's choices may not)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from mlpmem_lightning.models.ladder import MEMORY_SIZES, SIZES

    if name in ("decoder_size", "memory_size"):  # in ladder order: the dashboard's axes run small to large
        ladder = list(SIZES if name == "decoder_size" else MEMORY_SIZES)
        return CategoricalDistribution(ladder + sorted(set(values) - set(ladder)))
    if name == "seed" or name in INTEGER:
        return IntDistribution(int(min(values)), int(max(values)), log=name in LOG and min(values) > 0)
    return FloatDistribution(float(min(values)), float(max(values)), log=name in LOG and min(values) > 0)


def suggest(trial, name: str, dist) -> Any:
    """``trial.suggest_*`` for a distribution: the public API that records a parameter with its distribution."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
