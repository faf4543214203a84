"""The accelerator's name and its peaks: dense bf16 (MFU), IEEE fp32 and HBM bandwidth (the search's bounds)."""

from __future__ import annotations

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (datasheets)
PEAK_FP32 = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12}  # IEEE fp32 FLOP/s, no tensor cores (SXM datasheets)
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def peak_fp32(name: str) -> float | None:
    return next((v for k, v in PEAK_FP32.items() if k in name), None)


def hbm_bandwidth(name: str) -> float | None:
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in name), None)
