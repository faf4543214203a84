"""Token-level NLL accumulated exactly, for one or many interpolation weights at once."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class TokenNLL(Metric):
    """Sum of per-token NLL and token count, float64, one entry per λ of a grid.

    Perplexity is exp(sum / count) over the whole split: independent of batch size and
    of how rows are spread over devices (states are summed across ranks).
    """

    full_state_update = False

    def __init__(self, n: int = 1):
        super().__init__()
        self.add_state("nll_sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor) -> None:
        """``nll``: [n, tokens] (or [tokens] when n == 1)."""
        nll = nll.reshape(self.nll_sum.shape[0], -1).double()
        self.nll_sum += nll.sum(1)
        self.count += nll.shape[1]

    def compute(self) -> torch.Tensor:
        """Mean NLL per λ: [n] (torchmetrics squeezes n == 1 to a scalar)."""
        return self.nll_sum / self.count
