"""`KNNLM`: evaluation of a frozen decoder interpolated with kNN retrieval (validate/test only).

One pass over a split computes, for every position, log p_LM(label) and the key (the
datastore's hook point), searches the datastore, and accumulates the interpolated NLL
for every λ of the grid at once. Only the label's kNN probability is needed, so no
vocabulary-sized tensor is built. λ=0 is the decoder alone, bit for bit.

``temperatures`` adds a grid of kNN temperatures to the same pass (the neighbours are searched once; see
:mod:`.temperature_grid`): (T, λ) are then chosen jointly, and ``val/temperature`` logs the chosen T.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.distributions import interpolate, label_log_probs
from mlpmem_lightning.knn.settings import KNN, KNNSettings
from mlpmem_lightning.lightning.evaluation import LambdaGridEvaluation, TokenNLL, scored, token_nll
from mlpmem_lightning.lightning.temperature_grid import TemperatureGridEvaluation
from mlpmem_lightning.models.decoder import logits_and_ffn_inputs
from mlpmem_lightning.models.loading import load_decoder


class KNNLM(TemperatureGridEvaluation, LambdaGridEvaluation, L.LightningModule):
    """A decoder mixed with its kNN datastore: log p = logaddexp(log(1-λ) + log p_LM, log λ + log p_kNN).

    Args:
        decoder: the decoder (``.ckpt``, run directory, or transformers directory).
        datastore: datastore directory built from that decoder (``mlpmem datastore``).
        index: ``flat`` (exact), ``ivfflat`` or ``ivfpq``.
        backend: ``auto`` or a name of the search registry (``mlpmem_lightning.knn.search.REGISTRY``;
            ``mlpmem targets --help`` lists them).
        k: neighbours per query.
        temperature: T of softmax(-d/T), d the squared L2 distance (when ``temperatures`` is unset).
        temperatures: a grid of T evaluated in the same pass, chosen jointly with λ (e.g. on valid; test then
            passes the chosen T alone). Default: ``[temperature]``.
        nprobe: IVF lists scanned per query.
        nlist: IVF lists of the clustered backend (default about N/256, at most 4096).
        rerank: re-rank approximate candidates with exact distances from the stored keys.
        lambdas: the λ grid evaluated in one pass (default 0, 0.05, ..., 1; include 0 for ``decoder_ppl``).
        lambda_: λ of the headline ``loss``/``ppl`` (e.g. chosen on valid); best of the grid if unset.
    """

    def __init__(self, decoder: str, datastore: str, index: str = KNN.index, backend: str = KNN.backend,
                 k: int = KNN.k, temperature: float = KNN.temperature, nprobe: int = KNN.nprobe,
                 rerank: bool = KNN.rerank, nlist: int | None = KNN.nlist, lambdas: list[float] | None = None,
                 lambda_: float | None = None, temperatures: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=self.EVAL_ONLY)
        if not temperature > 0:
            raise UserError(f"temperature {temperature} must be > 0")
        self.knn = KNNSettings(index=index, k=k, temperature=temperature, nprobe=nprobe, nlist=nlist, rerank=rerank,
                               backend=backend)
        self.init_lambda_grid(lambdas, lambda_)
        self.init_temperature_grid([temperature] if temperatures is None else list(temperatures))
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
        dm.store.check_tokenizer(dec.tokenizer_fingerprint, hp.decoder)
        store.check_data(dm.fingerprint, dm.seq_len, evaluated={"validate": "valid", "test": "test"}.get(stage))
        if not 0 < self.knn.k < len(store):
            raise UserError(f"k={self.knn.k} must be in [1, {len(store) - 1}] for a datastore of {len(store)} rows")
        self.net, self.layer = dec.net, m["layer"]
        device = self.trainer.strategy.root_device
        s = self.knn
        self.searcher = make_searcher(store.path, index=s.index, backend=s.backend, device=str(device),
                                      nprobe=s.nprobe, rerank=s.rerank, nlist=s.nlist)
        self.register_buffer("values", torch.from_numpy(np.asarray(store.values, dtype=np.int64)), persistent=False)

    def teardown(self, stage: str) -> None:
        """Let go of the searcher when its pass ends. A study runs validate and then test in one process, and the
        trainer's reference cycles kept the validate pass's searcher (its keys on the GPU) alive while the test pass
        built another: the n13m trial of 2026-12-02 ran out of its 35 GB share with two copies of 12M keys."""
        self.searcher = None

    @torch.no_grad()
    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TokenNLL) -> None:
        labels = scored(batch, batch["labels"])  # sliding windows: only the labels no earlier window scored
        logits, keys = logits_and_ffn_inputs(self.net, batch["input_ids"], self.layer)
        lp_lm = -scored(batch, token_nll(logits, batch["labels"])).double()
        dist, ids = self.searcher.search(scored(batch, keys).float(), self.knn.k)
        lp_knn = label_log_probs(dist, ids, self.values[ids.clamp_min(0)], labels, self.temperatures)  # [T, Q]
        metric.update(torch.stack([-interpolate(lp_lm, lp, self.lambdas) for lp in lp_knn]))  # [T, Λ, Q]
