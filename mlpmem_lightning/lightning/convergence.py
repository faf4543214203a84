"""Did a fit converge for its budget? The validation loss's improvement over the run's last 10% of steps.

A run still improving fast when its budget ends is under-trained for that budget (issue #15: the 1-epoch
decoders were). :class:`ConvergenceMonitor` records ``(step, val/loss)`` at every validation (kept in the
checkpoint, so a resumed run keeps its history) and at the end writes ``convergence.json`` in the run directory:
``last10_improvement`` = L(E - 0.1 T) - L(E) in nats, with T the run's steps, E its last validation (Lightning
validates every ``val_check_interval`` x T steps, rounded down: E may fall a few steps short of T) and L linearly
interpolated between validations, and ``converged`` = improvement <= ``threshold``. When E < 0.95 T, or no
validation lies at or before E - 0.1 T, the improvement is unknown (NaN) and ``converged`` is null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from mlpmem_lightning.core.artifacts import atomic_write_text

LAST_FRACTION = 0.1
THRESHOLD = 0.02  # nats over the last 10% of steps: 2% perplexity; larger = still learning at the budget's end
FILE = "convergence.json"


def last_improvement(steps: list[int], losses: list[float], total: int, fraction: float = LAST_FRACTION) -> float:
    """L(end - fraction x total) - L(end), end = the last validation, L interpolated linearly over the validations.

    NaN when the last validation is before 0.95 x total (the run's end was not measured) or none lies at or
    before the start of the window (nothing to compare with)."""
    if not steps:
        return math.nan
    order = np.argsort(steps)
    x, y = np.asarray(steps, float)[order], np.asarray(losses, float)[order]
    end = x[-1]
    start = end - fraction * total
    if end < (1 - fraction / 2) * total or x[0] > start:
        return math.nan
    return float(np.interp(start, x, y) - y[-1])


def summary(steps: list[int], losses: list[float], total: int, threshold: float = THRESHOLD) -> dict[str, Any]:
    """``last10_improvement`` and ``converged`` (None when unknown), as written to ``convergence.json``."""
    imp = last_improvement(steps, losses, total)
    return {"last10_improvement": None if math.isnan(imp) else imp,
            "converged": None if math.isnan(imp) else bool(imp <= threshold),
            "threshold": threshold, "total_steps": total, "val_steps": list(steps), "val_losses": list(losses)}


def read_summary(run: str | Path) -> dict[str, Any]:
    """A run's ``convergence.json`` ({} when the run wrote none: a run from before the monitor)."""
    path = Path(run) / FILE
    return json.loads(path.read_text()) if path.is_file() else {}


class ConvergenceMonitor(L.Callback):
    """Records the validation loss of a fit and writes its convergence summary at the end (rank 0)."""

    def __init__(self, monitor: str = "val/loss", threshold: float = THRESHOLD):
        self.monitor, self.threshold = monitor, threshold
        self.steps: list[int] = []
        self.losses: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        step = trainer.global_step
        if self.steps and self.steps[-1] == step:  # a repeated validation at one step keeps the last
            self.steps.pop(), self.losses.pop()
        self.steps.append(step)
        self.losses.append(float(value))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dry = getattr(trainer, "fast_dev_run", False)  # a dry run writes nothing
        if trainer.is_global_zero and trainer.max_steps > 0 and not dry:
            data = summary(self.steps, self.losses, trainer.max_steps, self.threshold)
            atomic_write_text(Path(trainer.default_root_dir) / FILE, json.dumps(data, indent=1))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "losses": list(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps, self.losses = list(state_dict["steps"]), list(state_dict["losses"])
