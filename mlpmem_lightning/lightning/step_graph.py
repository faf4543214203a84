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
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)
LossOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, labels) -> scalar loss


class GraphedTrainStep:
    """``step(x, y)`` runs ``loss_of(x, y)`` and its backward into ``net``'s gradients; returns the loss, detached."""

    def __init__(self, net: nn.Module, loss_of: LossOf, after_backward: Callable[[], None] | None = None,
                 warmup: int = 3):
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.loss_of, self.after_backward, self.warmup = loss_of, after_backward, warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # x, y, loss
        self.failed = False

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for p in self.params:
            p.grad = None  # every step's gradients are that step's alone, as in the graph
        loss = self.loss_of(x, y)
        loss.backward()
        if self.after_backward is not None:
            self.after_backward()
        return loss.detach()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if x.device.type != "cuda" or self.failed:
            return self._eager(x, y)
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if self.graph is None:
            self._capture(x, y)
            if self.failed:
                return self._eager(x, y)
        sx, sy, sloss = self.static
        if x.shape != sx.shape:
            return self._eager_outside(x, y)
        sx.copy_(x, non_blocking=True)
        sy.copy_(y, non_blocking=True)
        self.graph.replay()
        return sloss.clone()  # the next replay overwrites the static loss, while a logger may still hold it

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        sx, sy = x.clone(), y.clone()
        for p in self.params:
            p.grad = None  # captured backward allocates the gradients in the graph's pool
        graph = torch.cuda.CUDAGraph()
        dtype, on = torch.get_autocast_dtype("cuda"), torch.is_autocast_enabled("cuda")
        try:
            # autocast's weight cache would keep casts made during capture: capture requires it off
            with torch.autocast("cuda", dtype=dtype, enabled=on, cache_enabled=False), torch.cuda.graph(graph):
                sloss = self.loss_of(sx, sy)
                sloss.backward()
                if self.after_backward is not None:
                    self.after_backward()
        except RuntimeError as err:  # an op that needs the host (a sync, a CPU scalar): train eagerly
            log.warning("CUDA graph capture failed (%s); training without it", str(err).splitlines()[0])
            self.failed = True
            torch.cuda.synchronize()
            return
        self.graph, self.static = graph, (sx, sy, sloss.detach())

    def _eager_outside(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A batch of another shape (a short last batch): eagerly, then copy its gradients into the graph's."""
        grads = [p.grad for p in self.params]
        loss = self._eager(x, y)
        for p, g in zip(self.params, grads):
            g.copy_(p.grad)
            p.grad = g
        return loss
