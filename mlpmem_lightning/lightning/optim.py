"""Optimisation shared by every trained module: token budgets, AdamW, warmup + cosine.

Decoders and memories are trained the same way so that their scaling curves differ by
architecture, not by recipe: both take their defaults from one :class:`OptimSettings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from mlpmem_lightning.core.errors import UserError


@dataclass(frozen=True)
class OptimSettings:
    """AdamW with linear warmup then cosine decay; one default per setting for every trained module."""

    lr: float | None = None  # peak LR; None: the size rung's
    weight_decay: float = 0.1  # on matrices only
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = 0.05  # share of the steps spent warming up (at least warmup_min_steps)
    min_lr_ratio: float = 0.1  # final LR as a fraction of the peak
    warmup_min_steps: int = 100  # issue #15: 2% of a few hundred steps was a warmup too short to matter


OPTIM = OptimSettings()


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_steps(total: int, fraction: float = 0.05, min_steps: int = 100) -> int:
    """Warmup steps of a run of ``total`` steps: ``fraction`` of them or ``min_steps``, whichever is larger, but
    never more than half the run (a short run must also decay: a run of 150 steps warms up for 75). At least one."""
    return max(1, min(total // 2, max(min_steps, round(fraction * total))))


def steps_for_tokens(max_tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps of a token budget: whole steps, at least one (the CLI sets ``trainer.max_steps`` with it)."""
    return max(1, math.ceil(max_tokens / tokens_per_step))


def tokens_per_step(module: L.LightningModule) -> int:
    """Tokens of one optimizer step across every rank: batch x seq_len x accumulation x world size."""
    t, dm = module.trainer, module.trainer.datamodule
    return dm.batch_size * dm.seq_len * t.accumulate_grad_batches * t.world_size


def adamw_warmup_cosine(module: L.LightningModule, params: list[torch.nn.Parameter], lr: float,
                        s: OptimSettings, capturable: bool = False) -> dict[str, Any]:
    """AdamW with decay on matrices only (not norms or biases), stepped per optimizer step, at peak ``lr``.

    ``capturable`` (on a GPU): the step can be replayed inside a CUDA graph; its LR is then a device tensor,
    which the schedule fills in place."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    gpu = module.device.type == "cuda"
    capturable = capturable and gpu
    opt = torch.optim.AdamW(groups, lr=torch.tensor(lr, device=module.device) if capturable else lr,
                            betas=tuple(s.betas), fused=gpu, capturable=capturable)
    total = max(1, module.trainer.max_steps)
    warmup = warmup_steps(total, s.warmup_fraction, s.warmup_min_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total, s.min_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def is_logging_step(module: L.LightningModule) -> bool:
    """Whether the Trainer's logger writes this step (every step outside a Trainer, as in the bench).

    Training metrics are logged only then. Each Python float logged is a host-to-device copy that waits for the
    GPU, and each ``self.log`` call costs about 2 ms of host time whatever its value (Lightning's result
    collection re-walks the metric's state to move it to the value's device): more than a whole 6m step on an
    H200, so logging every step made the small rungs host-bound. A stopping trainer logs the step it stops at
    (Lightning does), so that step logs fresh values too."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return True
    every = trainer.log_every_n_steps
    return every > 0 and ((module.global_step + 1) % every == 0 or trainer.should_stop)


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make an optimizer's step replayable in a CUDA graph after its state was restored from a checkpoint.

    ``load_state_dict`` takes the saved groups' ``lr`` and ``capturable``: a run saved without the step graph has a
    float LR, which a captured step would freeze at its value at capture (the schedule would stop moving it)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not (torch.is_tensor(group["lr"]) and group["lr"].device == device):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


class ClipGradients:
    """Gradient clipping that works with fused AdamW under bf16-mixed (a LightningModule mixin).

    Lightning refuses ``gradient_clip_val`` with any optimizer that unscales gradients itself
    (``fused=True``), because with an fp16 loss scaler it could not unscale them first. bf16 and
    fp32 have no scaler, so the gradients are already true gradients: clip them directly.
    """

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if not gradient_clip_val:
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise UserError("gradient clipping with an fp16 loss scaler is not supported with fused AdamW: "
                            "use --trainer.precision bf16-mixed or 32")
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)


class FiniteLossGuard:
    """Stop training on a NaN/inf loss without a host-device sync every step (a LightningModule mixin).

    ``bool(torch.isfinite(loss))`` each step would make the host wait for the GPU and stop it from
    queueing the next step. Instead the first bad step is recorded on the device and read every
    ``log_every_n_steps`` steps, at epoch end, and before any checkpoint is written, so the
    checkpoints on disk still all hold finite weights: the last good one is kept.
    """

    _first_bad: torch.Tensor | None = None

    def guard_loss(self, loss: torch.Tensor) -> None:
        """Record ``loss``; check every ``log_every_n_steps`` steps (each step when not in a Trainer)."""
        bad = ~torch.isfinite(loss.detach())
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._first_bad = torch.where((self._first_bad < 0) & bad, self.global_step, self._first_bad)
        trainer = getattr(self, "_trainer", None)
        every = trainer.log_every_n_steps if trainer is not None else 1
        if (self.global_step + 1) % max(1, every) == 0:
            self.check_finite_loss()

    def check_finite_loss(self) -> None:
        """One sync: raise the one-line error if any step since the start had a non-finite loss."""
        if self._first_bad is not None and (step := int(self._first_bad)) >= 0:
            raise UserError(f"training loss became NaN/inf at step {step}: lower --model.lr; "
                            "the last good checkpoint is kept")

    def on_train_epoch_end(self) -> None:
        self.check_finite_loss()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite_loss()
