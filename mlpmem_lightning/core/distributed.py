"""Rank-sharded stages (datastore, targets) on one process or many, started the way Lightning users expect.

Each rank runs ``fn(**kwargs, device=..., rank=r, world_size=W, barrier=...)``; the stages decide how rows are
split and who writes the manifest, this module only decides where the ranks come from:

- under ``torchrun`` (or SLURM/any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``), every
  process is already a rank: Lightning Fabric reads the environment and joins the process group;
- ``--devices N`` on a plain command line: Fabric's ``ddp_spawn`` starts N processes on a free port;
- otherwise: this process is the only rank.

Fabric picks NCCL on GPUs and gloo on CPUs and assigns one GPU per local rank, so nothing here names a port or
a backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

RankFn = Callable[..., Any]
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU; anything else as torch spells it."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def launched_externally() -> bool:
    """Whether a launcher (torchrun, SLURM's srun with the variables exported) already made this process a rank."""
    return all(k in os.environ for k in _LAUNCHER_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def run_on_ranks(fn: RankFn, devices: int = 1, device: str = "auto", **kwargs: Any) -> Any:
    """Run ``fn`` on every rank (see the module docstring); returns rank 0's result in this process, else None.

    With one rank ``fn`` runs here on ``device``; with several, each rank gets its own device from Fabric.
    """
    if not launched_externally() and devices <= 1:
        return fn(**kwargs, device=str(pick_device(device)), rank=0, world_size=1, barrier=_no_barrier)
    from lightning.fabric import Fabric

    accelerator = "cpu" if pick_device(device).type == "cpu" else "auto"
    if launched_externally():
        fabric = Fabric(accelerator=accelerator, strategy="ddp", devices=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                        num_nodes=_num_nodes())
        fabric.launch()
        return _Job(fn, kwargs)(fabric)
    fabric = Fabric(accelerator=accelerator, strategy="ddp_spawn", devices=devices)
    return fabric.launch(_Job(fn, kwargs))


class _Job:
    """``fn`` and its arguments as one opaque object: Fabric's launcher walks dataclasses and containers it is
    handed (to unshare tensors) and would try to assign into our frozen settings dataclasses."""

    def __init__(self, fn: RankFn, kwargs: dict[str, Any]):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, fabric) -> Any:
        return self.fn(**self.kwargs, device=str(fabric.device), rank=fabric.global_rank,
                       world_size=fabric.world_size, barrier=fabric.barrier)


def _num_nodes() -> int:
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, world // max(1, local))


def _no_barrier() -> None:
    """One rank waits for nobody."""
