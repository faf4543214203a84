"""What every benchmark section shares: the device's name and peak, and a synchronised timing of one call."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (datasheets)


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def per_second(fn: Callable[[], Any], queries: int) -> tuple[float, Any]:
    """(queries per second, result) of one synchronised call, after an untimed one (CUDA and cuBLAS
    start-up, lazy uploads: the first GPU work of a process ran 3x slower in lease 6d)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return queries / (time.perf_counter() - t), out
