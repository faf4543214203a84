"""`KNNLM`: evaluation of a frozen decoder interpolated with kNN retrieval (validate/test only).

One pass over a split computes, for every position, log p_LM(label) and the key (the
datastore's hook point), searches the datastore, and accumulates the interpolated NLL
for every λ of the grid at once. Only the label's kNN probability is needed, so no
vocabulary-sized tensor is built. λ=0 is the decoder alone, bit for bit.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.distributions import interpolate, label_log_prob
from mlpmem_lightning.lightning.decoder_lm import token_nll
from mlpmem_lightning.lightning.evaluation import TokenNLL
from mlpmem_lightning.models.decoder import logits_and_ffn_inputs
from mlpmem_lightning.models.loading import load_decoder

DEFAULT_LAMBDAS = tuple(round(0.05 * i, 2) for i in range(21))


def check_lambdas(lambdas, fixed: float | None = None) -> None:
    bad = [x for x in (*lambdas, *([] if fixed is None else [fixed])) if not 0.0 <= x <= 1.0]
    if bad:
        raise UserError(f"λ must lie in [0, 1], got {bad}: fix --model.lambdas / --model.lambda_")


def log_lambda_grid(module: L.LightningModule, metric: TokenNLL, lambdas: torch.Tensor, prefix: str,
                    fixed: float | None) -> None:
    """Log perplexity per λ, the best λ, and the headline loss/ppl (at ``fixed`` λ if given, else the best)."""
    loss = metric.compute().reshape(-1)  # torchmetrics squeezes a one-λ grid to a scalar
    metric.reset()
    best = int(torch.argmin(loss))
    for lam, value in zip(lambdas.tolist(), loss):
        module.log(f"{prefix}/ppl_lambda_{lam:.2f}", torch.exp(value))
    pick = best if fixed is None else int(torch.argmin((lambdas - fixed).abs()))
    module.log_dict({f"{prefix}/best_lambda": lambdas[best].float(), f"{prefix}/best_ppl": torch.exp(loss[best]),
                     f"{prefix}/decoder_ppl": torch.exp(loss[0]) if lambdas[0] == 0 else torch.tensor(float("nan")),
                     f"{prefix}/lambda": lambdas[pick].float(), f"{prefix}/loss": loss[pick],
                     f"{prefix}/ppl": torch.exp(loss[pick])}, prog_bar=False)


class LambdaGridEvaluation:
    """Validation/test hooks shared by KNNLM and MemoryLM: ``_eval_step`` accumulates the NLL of every λ
    into ``val_nll``/``test_nll``; the epoch ends log the grid (``log_lambda_grid``)."""

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_nll)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_nll)

    def on_validation_epoch_end(self) -> None:
        log_lambda_grid(self, self.val_nll, self.lambdas, "val", self.hparams.lambda_)

    def on_test_epoch_end(self) -> None:
        log_lambda_grid(self, self.test_nll, self.lambdas, "test", self.hparams.lambda_)


class KNNLM(LambdaGridEvaluation, L.LightningModule):
    """A decoder mixed with its kNN datastore: log p = logaddexp(log(1-λ) + log p_LM, log λ + log p_kNN).

    Args:
        decoder: the decoder (``.ckpt``, run directory, or transformers directory).
        datastore: datastore directory built from that decoder (``mlpmem datastore``).
        index: ``flat`` (exact), ``ivfflat`` or ``ivfpq``.
        backend: ``auto`` or a name of the search registry (``mlpmem_lightning.knn.search.REGISTRY``;
            ``mlpmem targets --help`` lists them).
        k: neighbours per query.
        temperature: T of softmax(-d/T), d the squared L2 distance.
        nprobe: IVF lists scanned per query.
        nlist: IVF lists of the clustered backend (default about N/256, at most 4096).
        rerank: re-rank approximate candidates with exact distances from the stored keys.
        lambdas: the λ grid evaluated in one pass (default 0, 0.05, ..., 1; include 0 for ``decoder_ppl``).
        lambda_: λ of the headline ``loss``/``ppl`` (e.g. chosen on valid); best of the grid if unset.
    """

    def __init__(self, decoder: str, datastore: str, index: str = "flat", backend: str = "auto", k: int = 1024,
                 temperature: float = 16.0, nprobe: int = 32, rerank: bool = False,
                 nlist: int | None = None, lambdas: list[float] | None = None, lambda_: float | None = None):
        super().__init__()
        self.save_hyperparameters()
        lambdas = list(DEFAULT_LAMBDAS) if lambdas is None else lambdas
        check_lambdas(lambdas, lambda_)
        if temperature <= 0:
            raise UserError(f"temperature {temperature} must be > 0")
        self.register_buffer("lambdas", torch.tensor(sorted(lambdas), dtype=torch.float64), persistent=False)
        self.val_nll, self.test_nll = TokenNLL(len(lambdas)), TokenNLL(len(lambdas))
        self.net = None

    def setup(self, stage: str) -> None:
        from mlpmem_lightning.knn.search import make_searcher

        hp, dm = self.hparams, self.trainer.datamodule
        dec = load_decoder(hp.decoder)
        store = Datastore(hp.datastore)
        m = store.manifest
        if m.get("decoder_fingerprint") != dec.fingerprint:
            raise UserError(f"datastore {hp.datastore} was built from decoder {m.get('decoder_fingerprint')} but "
                            f"--model.decoder {hp.decoder} has {dec.fingerprint}: rebuild it with `mlpmem datastore`")
        store.check_data(dm.fingerprint, dm.seq_len)
        if not 0 < hp.k < len(store):
            raise UserError(f"k={hp.k} must be in [1, {len(store) - 1}] for a datastore of {len(store)} rows")
        self.net, self.layer = dec.net, m["layer"]
        device = self.trainer.strategy.root_device
        self.searcher = make_searcher(store.path, index=hp.index, backend=hp.backend, device=str(device),
                                      nprobe=hp.nprobe, rerank=hp.rerank, nlist=hp.nlist)
        self.register_buffer("values", torch.from_numpy(np.asarray(store.values, dtype=np.int64)), persistent=False)

    @torch.no_grad()
    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TokenNLL) -> None:
        labels = batch["labels"].flatten()
        logits, keys = logits_and_ffn_inputs(self.net, batch["input_ids"], self.layer)
        lp_lm = -token_nll(logits, batch["labels"]).double().flatten()
        dist, ids = self.searcher.search(keys.reshape(labels.numel(), -1).float(), self.hparams.k)
        lp_knn = label_log_prob(dist, ids, self.values[ids.clamp_min(0)], labels, self.hparams.temperature)
        metric.update(-interpolate(lp_lm, lp_knn, self.lambdas))
