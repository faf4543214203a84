"""The kNN temperature T chosen jointly with λ on valid, from one pass over the split.

The kNN-LM's search gives each position's neighbour distances once; p_kNN(label) at every T of a grid follows
from them cheaply (``knn.distributions.label_log_probs``), and the NLL of every (T, λ) pair is accumulated in one
:class:`~mlpmem_lightning.lightning.evaluation.TokenNLL` of T × Λ entries. At the epoch's end the pair with the
lowest mean NLL is chosen (the smaller T, then the smaller λ, on exact ties); the λ curve logged
(``ppl_lambda_*``) is the one at the chosen T, so everything downstream of the λ grid reads as before. Test is then
run with the chosen T alone and ``lambda_`` fixed at the chosen λ.

Why a grid and not one T: squared L2 distances grow with the key width (d = 64 → 1024 across the ladder), so a
single T flattens the neighbour weights at one width and sharpens them at another; the kNN-LM would then be
handicapped by a different amount at each size.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.lightning.evaluation import TokenNLL, log_lambda_losses

# log-spaced, a factor 2 apart, 1/8 … 1024: wide enough for squared distances at key widths 64 … 1024+
DEFAULT_TEMPERATURES = tuple(2.0 ** e for e in range(-3, 11))


def check_temperatures(temperatures: list[float]) -> None:
    if not len(temperatures):
        raise UserError("the temperature grid is empty: pass --model.temperatures with at least one value > 0")
    bad = [t for t in temperatures if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0)]
    if bad:
        raise UserError(f"kNN temperatures must be finite and > 0, got {bad}: fix --model.temperatures")


def temperature_label(t: float) -> str:
    """How a temperature names its metric: ``ppl_T_0.125``, ``ppl_T_16``."""
    return f"{t:g}"


def pick(loss: torch.Tensor, lambdas: torch.Tensor, fixed: float | None) -> tuple[int, int]:
    """(T index, λ index) of the lowest loss in ``loss`` [T, Λ]; with ``fixed`` λ, the best T at that λ."""
    if fixed is not None:
        li = int(torch.argmin((lambdas - fixed).abs()))
        return int(torch.argmin(loss[:, li])), li
    flat = int(torch.argmin(loss.reshape(-1)))  # first minimum: the smaller T (rows), then the smaller λ
    return divmod(flat, loss.shape[1])


def log_temperature_grid(module: L.LightningModule, metric: TokenNLL, lambdas: torch.Tensor,
                         temperatures: torch.Tensor, prefix: str, fixed: float | None) -> None:
    """Log the chosen T (``<prefix>/temperature``), the best valid ppl per T (``<prefix>/ppl_T_<T>``, at the λ
    ``<prefix>/lambda_T_<T>``) and the λ grid
    at the chosen T (``log_lambda_losses``: ``ppl_lambda_*``, ``lambda``, ``loss``, ``ppl``...)."""
    loss = metric.compute().reshape(len(temperatures), len(lambdas))
    metric.reset()
    ti, _ = pick(loss, lambdas, fixed)
    for t, row in zip(temperatures.tolist(), loss):  # each T at its own best λ: a point of the study (recording.py)
        module.log(f"{prefix}/ppl_T_{temperature_label(t)}", torch.exp(row.min()))
        module.log(f"{prefix}/lambda_T_{temperature_label(t)}", lambdas[int(torch.argmin(row))].float())
    edge = len(temperatures) > 1 and ti in (0, len(temperatures) - 1)
    module.log_dict({f"{prefix}/temperature": temperatures[ti].float(),
                     f"{prefix}/temperature_at_edge": torch.tensor(float(edge))})
    log_lambda_losses(module, loss[ti], lambdas, prefix, fixed)


class TemperatureGridEvaluation:
    """For a module with a λ grid (``LambdaGridEvaluation``) that also scores a grid of kNN temperatures: its
    ``_eval_step`` updates the metric with [T, Λ, tokens] NLLs."""

    def init_temperature_grid(self, temperatures: list[float]) -> None:
        check_temperatures(temperatures)
        self.register_buffer("temperatures", torch.tensor(sorted(temperatures), dtype=torch.float64),
                             persistent=False)
        n = len(temperatures) * len(self.lambdas)
        self.val_nll, self.test_nll = TokenNLL(n), TokenNLL(n)

    def on_validation_epoch_end(self) -> None:
        log_temperature_grid(self, self.val_nll, self.lambdas, self.temperatures, "val", self.lambda_)

    def on_test_epoch_end(self) -> None:
        log_temperature_grid(self, self.test_nll, self.lambdas, self.temperatures, "test", self.lambda_)
