"""Training throughput and MFU in the metrics, measured without a host-device sync every step.

Lightning's ``ThroughputMonitor`` calls ``torch.cuda.synchronize()`` at every batch end, which stops the host
from queueing the next step and costs the small rungs a third of their speed on a GPU. This callback syncs
once per logging interval (``log_every_n_steps``) and logs the interval's average instead.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


class IntervalThroughput(L.Callback):
    """Logs ``train/tokens_per_sec``, ``train/flops_per_sec`` and ``train/mfu`` (when the chip's peak is known)
    every ``log_every_n_steps`` optimizer steps, from the module's ``tokens_per_step`` and ``flops_per_token``."""

    def __init__(self, peak_flops: float | None = None):
        self.peak = peak_flops
        self._start: tuple[int, float] | None = None  # (global step, wall time) at the interval's start

    def _now(self, trainer: L.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # once per interval: the wall time covers the GPU's work
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = None
        if self.peak is None and trainer.strategy.root_device.type == "cuda":
            from mlpmem_lightning.core.hardware import gpu_name, peak_flops

            self.peak = peak_flops(gpu_name())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, every = trainer.global_step, max(1, trainer.log_every_n_steps)
        if self._start is None:
            self._start = (step, self._now(trainer))  # the first step (compilation, capture) is not timed
            return
        if step % every or step == self._start[0]:
            return
        now = self._now(trainer)
        steps, seconds = step - self._start[0], now - self._start[1]
        tokens = steps * getattr(pl_module, "tokens_per_step", 0) / seconds
        metrics = {"train/tokens_per_sec": tokens}
        if (fpt := getattr(pl_module, "flops_per_token", None)) is not None:
            metrics["train/flops_per_sec"] = tokens * fpt
            if self.peak:
                metrics["train/mfu"] = tokens * fpt / (self.peak * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._start = (step, now)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = None  # validation time is not training time
