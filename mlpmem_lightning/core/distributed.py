"""One process per device for the stages that split their rows across ranks (datastore, targets).

Each rank runs ``fn(**kwargs, device=..., rank=r, world_size=W, barrier=dist.barrier)`` inside a
process group (NCCL with one GPU per rank on CUDA, gloo on CPU). The stages themselves decide how
rows are split and who writes the manifest; this module only starts and joins the processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch


def spawn(fn: Callable[..., Any], world_size: int, port: int = 29517, **kwargs: Any) -> None:
    """Run ``fn`` on ``world_size`` ranks and wait for all (an exception on a rank is re-raised here)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(world_size, port, fn, kwargs), nprocs=world_size)


def _rank_main(rank: int, world_size: int, port: int, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    try:
        fn(**kwargs, device=f"cuda:{rank}" if cuda else "cpu", rank=rank, world_size=world_size,
           barrier=dist.barrier)
    finally:
        dist.destroy_process_group()
