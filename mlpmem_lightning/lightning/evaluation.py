"""Evaluation shared by every module: exact token NLL, and the λ grid of the mixtures.

Perplexity is exp of the token-weighted mean NLL over a whole split, accumulated in float64 (torchmetrics sums
the states across ranks), so it does not depend on batch size or on how rows are spread over devices. The
mixtures (kNN-LM, decoder + memory) accumulate the NLL of every λ of a grid in one pass; λ is then chosen on
valid and test is reported at that λ.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from mlpmem_lightning.core.errors import UserError

FLOAT_CHUNK = 1 << 28  # elements of float32 logits made at once (1 GiB)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood in float32, shape of ``labels``.

    In chunks of rows: a whole evaluation batch's float32 copy of bf16 logits is 16 GiB at 1024 windows x 256 x
    16384, which ran a 1/7 share of an H200 out of memory (the LR search's 7 processes); each row's NLL is its own."""
    flat, y = logits.flatten(0, -2), labels.flatten()
    step = max(1, FLOAT_CHUNK // max(1, flat.shape[-1]))
    if len(y) <= step:
        return F.cross_entropy(flat.float(), y, reduction="none").view_as(labels)
    parts = [F.cross_entropy(flat[i:i + step].float(), y[i:i + step], reduction="none") for i in range(0, len(y), step)]
    return torch.cat(parts).view_as(labels)


def scored(batch: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, L, ...] at the positions a batch scores, flattened to [tokens, ...]: all of them, or those of
    ``score_mask`` (sliding-window evaluation, :mod:`..data.sliding`: labels already scored by an earlier
    window are left out)."""
    mask = batch.get("score_mask")
    return x.flatten(0, 1) if mask is None else x[mask.to(x.device)]


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


DEFAULT_LAMBDAS = tuple(round(0.05 * i, 2) for i in range(21))
# a fixed λ this close to a grid point is that point: logged metrics are float32 (val/best_lambda = 0.44999998)
LAMBDA_TOLERANCE = 1e-6


def check_lambdas(lambdas, fixed: float | None = None) -> None:
    """λ in [0, 1], a non-empty grid, and a fixed λ that is one of its points (never silently the nearest one)."""
    if not len(lambdas):
        raise UserError("the λ grid is empty: pass --model.lambdas with at least one value in [0, 1]")
    bad = [x for x in (*lambdas, *([] if fixed is None else [fixed])) if not 0.0 <= x <= 1.0]
    if bad:
        raise UserError(f"λ must lie in [0, 1], got {bad}: fix --model.lambdas / --model.lambda_")
    if fixed is not None and min(abs(fixed - x) for x in lambdas) > LAMBDA_TOLERANCE:
        raise UserError(f"--model.lambda_ {fixed} is not on the λ grid {sorted(lambdas)}: pass a value of the grid "
                        "or add it with --model.lambdas")


def log_lambda_grid(module: L.LightningModule, metric: TokenNLL, lambdas: torch.Tensor, prefix: str,
                    fixed: float | None) -> None:
    """Log perplexity per λ, the best λ, and the headline loss/ppl at ``fixed`` λ (valid: else the best; test:
    else no headline, only ``test/loss_at_best_test_lambda``, since λ picked on test flatters the mixture)."""
    loss = metric.compute().reshape(-1)  # torchmetrics squeezes a one-λ grid to a scalar
    metric.reset()
    log_lambda_losses(module, loss, lambdas, prefix, fixed)


def log_lambda_losses(module: L.LightningModule, loss: torch.Tensor, lambdas: torch.Tensor, prefix: str,
                      fixed: float | None) -> None:
    """:func:`log_lambda_grid` from the mean NLL per λ (``loss`` [Λ]) already computed."""
    best = int(torch.argmin(loss))
    for lam, value in zip(lambdas.tolist(), loss):
        module.log(f"{prefix}/ppl_lambda_{lam:.2f}", torch.exp(value))
    pick = best if fixed is None else int(torch.argmin((lambdas - fixed).abs()))
    module.log_dict({f"{prefix}/best_lambda": lambdas[best].float(), f"{prefix}/best_ppl": torch.exp(loss[best]),
                     f"{prefix}/decoder_ppl": torch.exp(loss[0]) if lambdas[0] == 0 else torch.tensor(float("nan"))},
                    prog_bar=False)
    if prefix == "test" and fixed is None:  # λ picked on test itself: never the headline (lightning/valid_lambda.py)
        module.log_dict({"test/loss_at_best_test_lambda": loss[best],
                         "test/ppl_at_best_test_lambda": torch.exp(loss[best])}, prog_bar=False)
        return
    module.log_dict({f"{prefix}/lambda": lambdas[pick].float(), f"{prefix}/loss": loss[pick],
                     f"{prefix}/ppl": torch.exp(loss[pick])}, prog_bar=False)


class LambdaGridEvaluation:
    """Validation/test hooks shared by KNNLM and MemoryLM: ``_eval_step`` accumulates the NLL of every λ
    into ``val_nll``/``test_nll``; the epoch ends log the grid (``log_lambda_grid``).

    The grid and the fixed λ are evaluation settings, not the model's: modules keep them out of their saved
    hyper-parameters, so a checkpoint never overrides the λ a ``validate``/``test`` command line asks for.
    """

    EVAL_ONLY = ["lambdas", "lambda_"]  # for save_hyperparameters(ignore=...)

    def init_lambda_grid(self, lambdas: list[float] | None, lambda_: float | None) -> None:
        lambdas = list(DEFAULT_LAMBDAS) if lambdas is None else list(lambdas)
        check_lambdas(lambdas, lambda_)
        self.lambda_ = lambda_
        self.register_buffer("lambdas", torch.tensor(sorted(lambdas), dtype=torch.float64), persistent=False)
        self.val_nll, self.test_nll = TokenNLL(len(lambdas)), TokenNLL(len(lambdas))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_nll)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_nll)

    def on_validation_epoch_end(self) -> None:
        log_lambda_grid(self, self.val_nll, self.lambdas, "val", self.lambda_)

    def on_test_epoch_end(self) -> None:
        log_lambda_grid(self, self.test_nll, self.lambdas, "test", self.lambda_)
