"""A fixed-shape training step (forward, loss, backward, optionally clipping and the optimizer) as one CUDA graph.

Why: at the study's sizes (200k-6m parameters) a training step is 2-5 ms of GPU work but 10-40 ms of kernel
launches and Python (hundreds of small kernels through the transformers model, the loss and autograd).
Replaying one captured graph launches them all at once. Neither Lightning nor ``torch.compile``'s
``reduce-overhead`` mode covers backward and the loss of a Lightning step together, so this small class does
what the PyTorch docs call whole-network capture (``torch.cuda.graph``). ``after_backward`` (gradient clipping
and the optimizer's step, which must then be capturable, with its LR a device tensor) is captured with it; the
LR schedule and the step counter stay Lightning's.

The gradients live in the graph's memory pool: each replay *overwrites* them (it does not accumulate), so the
owner must not zero them between steps (``DecoderLM.optimizer_zero_grad``) and must not accumulate batches.
The first ``warmup`` steps run eagerly on a side stream (as capture requires; they are real training steps),
the next is captured and replayed, so every step trains on its own batch exactly as the eager path does.
On CPU, or if capture fails (an op that syncs the host), it runs eagerly and says so once.

``StepGraphHooks`` is the LightningModule side, shared by ``DecoderLM`` and ``MemoryLM``: it builds the step graph
in ``setup`` and turns Lightning's own backward, zero-grad and optimizer step into no-ops while the graph runs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.lightning.optim import make_capturable

log = logging.getLogger(__name__)
# (batch tensors...) -> the loss (a scalar), or a vector whose first entry is the loss and the rest are logged
LossOf = Callable[..., torch.Tensor]


def _loss_part(out: torch.Tensor) -> torch.Tensor:
    return out if out.ndim == 0 else out[0]


def _capture_autocast() -> torch.autocast:
    """The autocast of the caller without its weight cache (which would keep casts made during capture)."""
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"),
                          cache_enabled=False)


class GraphedTrainStep:
    """``step(*xs)`` runs ``loss_of(*xs)`` and its backward into ``net``'s gradients; returns its output, detached."""

    def __init__(self, net: nn.Module, loss_of: LossOf, after_backward: Callable[[], None] | None = None,
                 warmup: int = 3):
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.loss_of, self.after_backward, self.warmup = loss_of, after_backward, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None  # inputs, output
        self.failed = False
        self.attempts = 0  # failed captures

    def _eager(self, *xs: torch.Tensor) -> torch.Tensor:
        for p in self.params:
            p.grad = None  # every step's gradients are that step's alone, as in the graph
        out = self.loss_of(*xs)
        _loss_part(out).backward()
        if self.after_backward is not None:
            self.after_backward()
        return out.detach()

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if xs[0].device.type != "cuda" or self.failed:
            return self._eager(*xs)
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with _capture_autocast(), torch.cuda.stream(side):  # as at capture: compiled code's guards then match
                out = self._eager(*xs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self._capture(*xs)
            if self.graph is None and not self.failed:  # a first capture can fail while compiled code recompiles
                self._capture(*xs)
            if self.failed:
                return self._eager(*xs)
        static_in, static_out = self.static
        if any(x.shape != s.shape for x, s in zip(xs, static_in)):
            return self._eager_outside(*xs)
        for x, s in zip(xs, static_in):
            s.copy_(x, non_blocking=True)
        self.graph.replay()
        return static_out.clone()  # the next replay overwrites the static output, while a logger may still hold it

    def _capture(self, *xs: torch.Tensor) -> None:
        static_in = tuple(x.clone() for x in xs)
        for p in self.params:
            p.grad = None  # captured backward allocates the gradients in the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the DataLoader's pin-memory thread keeps pinning the next batch during capture, which
            # the default (global) mode forbids (a memory fit of the GPU smoke sweep died of it: "operation not
            # permitted when stream is capturing", raised in the pin-memory thread)
            with _capture_autocast(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.loss_of(*static_in)
                _loss_part(out).backward()
                if self.after_backward is not None:
                    self.after_backward()
        except RuntimeError as err:  # an op that needs the host (a sync, a CPU scalar): train eagerly
            first = err.__context__ or err  # "failed due to a previous error" hides the one that broke it
            self.attempts += 1
            log.warning("CUDA graph capture failed (%s; first: %s)%s", str(err).splitlines()[0],
                        str(first).splitlines()[0] if str(first) else type(first).__name__,
                        "; training without it" if self.attempts > 1 else "; trying once more")
            self.failed = self.attempts > 1
            torch.cuda.synchronize()
            return
        self.graph, self.static = graph, (static_in, out.detach())

    def _eager_outside(self, *xs: torch.Tensor) -> torch.Tensor:
        """A batch of another shape (a short last batch): eagerly, then copy its gradients into the graph's."""
        grads = [p.grad for p in self.params]
        out = self._eager(*xs)
        for p, g in zip(self.params, grads):
            g.copy_(p.grad)
            p.grad = g
        return out


class StepGraphHooks:
    """LightningModule mixin: the training step as one CUDA graph (``--model.cuda_graph``).

    The owner calls ``start_step_graph(net, loss_of)`` in ``setup("fit")`` and, in ``training_step``, calls
    ``self.step_graph(*tensors)`` when it is set. Lightning's backward, gradient zeroing and optimizer step become
    no-ops then (the graph replays them); its LR schedule, step counter, logging and checkpoints stay as they are.
    """

    step_graph: GraphedTrainStep | None = None

    def start_step_graph(self, net: nn.Module, loss_of: LossOf) -> None:
        trainer = self.trainer
        if trainer.accumulate_grad_batches != 1:
            raise UserError("--model.cuda_graph true overwrites the gradients at each step: "
                            "drop --trainer.accumulate_grad_batches or set --model.cuda_graph false")
        if trainer.world_size > 1:  # its backward runs inside the step, outside DDP's gradient reduction
            raise UserError("--model.cuda_graph true trains on one device: set --model.cuda_graph false to "
                            f"train on {trainer.world_size} processes")
        self.step_graph = GraphedTrainStep(net, loss_of, self._clip_and_step)

    def _clip_and_step(self) -> None:
        """What Lightning does after backward, done inside the step graph: clip (``--trainer.gradient_clip_val``,
        by norm) and the AdamW update (capturable, its LR a device tensor that the LR schedule fills)."""
        optimizer = self.trainer.optimizers[0]
        if clip := self.trainer.gradient_clip_val:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if self.trainer.gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, clip)
            else:
                torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        if self.step_graph is None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer_closure()  # training_step: the graph replays forward, backward, clipping and the update

    def on_train_start(self) -> None:
        if self.step_graph is not None and self.device.type == "cuda":  # after a resumed optimizer's state is loaded
            make_capturable(self.trainer.optimizers[0], self.device)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if self.step_graph is None:  # the graph overwrites its gradients each step: nothing to zero
            optimizer.zero_grad()

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self.step_graph is None:
            super().backward(loss, *args, **kwargs)
