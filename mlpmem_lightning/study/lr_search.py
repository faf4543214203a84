"""Per-rung learning-rate search (`mlpmem lr-search --config SPEC`), recorded in ``<out>/<study>/lr.csv`` and reused.

For each decoder rung of the spec, at that rung's token budget (``lr_search.budget`` x the rule of
:mod:`.budget`, default 1), an Optuna study trains the decoder once per learning rate of a log-spaced grid
(``lr_search.grid``), through the sweep's own decoder stage (:class:`~.stages.Stages`, so a study that later
uses the chosen LR at that budget finds the run done), and scores it by its final *validation* loss. If the
best LR is at an edge of the grid, the grid is extended one step past that edge (the grid's own ratio), at most
``lr_search.max_extensions`` times, so that the chosen LR lies inside. A study reuses the choice with
``decoder_lr: {from: <out>/<study>/lr.csv}``; an LR still at an edge is refused there. The Optuna study of a
rung is named by what determines its result (size, budget, grid, token store, training config), and its
storage is ``<out>/<study>/lr_search.db``: finished trials are never re-run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from mlpmem_lightning.core.errors import UserError

log = logging.getLogger(__name__)
SEARCH_KEYS = {"grid", "max_extensions", "budget"}
DEFAULT_GRID = (3e-4, 1e-3, 3e-3, 1e-2)  # half-decade steps
LR_RANGE = (1e-7, 10.0)  # the trial parameter's distribution: wide enough for any extension


def check_lr_source(value: dict[str, Any]) -> None:
    """``decoder_lr: {from: PATH}`` and nothing else."""
    if set(value) != {"from"} or not isinstance(value["from"], str):
        raise UserError(f"decoder_lr {value!r}: write decoder_lr: {{from: PATH}} with the lr.csv `mlpmem lr-search` "
                        "wrote, a number, or leave it out")


def check_search_keys(budgets: list[float] | None, search: dict[str, Any]) -> None:
    ok = isinstance(budgets, list) and budgets and all(isinstance(b, (int, float)) and b > 0 for b in budgets)
    if budgets is not None and not ok:
        raise UserError(f"decoder_budgets {budgets!r}: give positive multiples of the budget rule, e.g. [0.5, 1.0]")
    bad = sorted(set(search) - SEARCH_KEYS)
    if bad:
        raise UserError(f"unknown lr_search keys {', '.join(bad)}: use {', '.join(sorted(SEARCH_KEYS))}")
    grid = search.get("grid", DEFAULT_GRID)
    if len(grid) < 3 or any(not (isinstance(x, (int, float)) and x > 0) for x in grid) or sorted(grid) != list(grid):
        raise UserError(f"lr_search grid {grid!r}: give 3 or more increasing positive learning rates, log-spaced")


def grid_ratio(grid: list[float]) -> float:
    """The step of a log-spaced grid (geometric mean of its ratios): how far an extension goes."""
    return math.exp(math.log(grid[-1] / grid[0]) / (len(grid) - 1))


def choose(losses: dict[float, float]) -> tuple[float, bool]:
    """The LR of lowest loss (non-finite losses count as worst) and whether it is at an edge of the grid tried."""
    lrs = sorted(losses)
    best = min(lrs, key=lambda lr: losses[lr] if math.isfinite(losses[lr]) else math.inf)
    return best, best in (lrs[0], lrs[-1])


def extension(losses: dict[float, float], ratio: float) -> float | None:
    """The next LR to try: one step past the edge the best LR sits on; None when the best is inside."""
    best, at_edge = choose(losses)
    if not at_edge:
        return None
    return best * ratio if best == max(losses) else best / ratio


def search(objective: Callable[[float], float], grid: list[float], max_extensions: int = 2,
           done: dict[float, float] | None = None) -> dict[float, float]:
    """Losses of every LR tried: the grid, then up to ``max_extensions`` steps past an edge. ``objective`` runs one
    LR (an Optuna trial); ``done`` holds the finished ones, never run again."""
    losses = dict(done or {})
    for lr in grid:
        if lr not in losses:
            losses[lr] = objective(lr)
    ratio = grid_ratio(list(grid))
    for _ in range(max_extensions):
        nxt = extension(losses, ratio)
        if nxt is None:
            break
        losses[nxt] = done[nxt] if done and nxt in done else objective(nxt)
    return losses


def recorded_lr(path: str | Path, size: str, tokens: int, fingerprint: str | None = None) -> float:
    """The LR `mlpmem lr-search` chose for ``size`` (at ``tokens`` if searched there, else at the largest budget
    searched: one LR per rung, as in the scaling-law literature); refused when missing or at its grid's edge."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"decoder_lr from {path}: no such file: run `mlpmem lr-search --config SPEC` first")
    df = pd.read_csv(path, float_precision="round_trip")
    rows = df[(df["decoder_size"] == size) & df["chosen"].astype(bool)]
    if fingerprint is not None:
        rows = rows[rows["token_store_fingerprint"] == fingerprint]
    if rows.empty:
        raise UserError(f"decoder_lr from {path}: no learning rate recorded for {size} on this token store: run "
                        "`mlpmem lr-search` with the study's sizes and data")
    exact = rows[rows["tokens"] == tokens]
    row = exact.iloc[-1] if len(exact) else rows.sort_values("tokens").iloc[-1]
    if bool(row["at_edge"]):
        raise UserError(f"decoder_lr from {path}: {size}'s best learning rate {row['lr']:g} is at the edge of its "
                        "grid (the optimum may lie outside): widen lr_search.grid or raise max_extensions, "
                        "then run lr-search again")
    return float(row["lr"])
