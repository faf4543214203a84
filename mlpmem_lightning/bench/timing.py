"""What every benchmark section shares: the device's name and peak, and a synchronised timing of one call."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from mlpmem_lightning.core.hardware import PEAK_BF16, gpu_name, peak_flops  # noqa: F401  (the bench's names)


def sync(dev: torch.device | None = None) -> None:
    """Wait for the work queued on ``dev`` (the current GPU if None; nothing on a CPU): CUDA launches are
    asynchronous, so a clock read without it times the launches, not the work."""
    on_gpu = torch.cuda.is_available() if dev is None else dev.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize(dev)


def per_second(fn: Callable[[], Any], queries: int) -> tuple[float, Any]:
    """(queries per second, result) of one synchronised call, after an untimed one (CUDA and cuBLAS
    start-up, lazy uploads: the first GPU work of a process ran 3x slower in lease 6d)."""
    fn()
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return queries / (time.perf_counter() - t), out
