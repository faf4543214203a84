"""The architecture registry: its rules, and a toy architecture registered in one place that runs through a
demo-sized sweep into results.csv and the report."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.distributions import interpolate
from mlpmem_lightning.lightning.evaluation import LambdaGridEvaluation, TokenNLL, token_nll
from mlpmem_lightning.models.loading import load_decoder
from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.architectures import Architecture, Score, lambda_grid_scores
from mlpmem_lightning.study.report import write_report
from mlpmem_lightning.study.stages import Stages, closure
from mlpmem_lightning.study.sweep import run_sweep
from tests.study.test_sweep import TINY

pytestmark = pytest.mark.integration  # runs whole stages end to end

# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------

def test_the_shipped_registry():
    assert architectures.names() == ("decoder", "knn_lm", "mlp_memory", "mlp_memory_ce")
    assert architectures.baseline().name == "decoder"
    assert {a.name: a.module for a in architectures.registered()} == {
        "decoder": "DecoderLM", "knn_lm": "KNNLM", "mlp_memory": "MemoryLM", "mlp_memory_ce": "MemoryLM"}
    assert architectures.get("mlp_memory").imitates == "knn_lm"


def test_registry_refuses_duplicates_a_second_baseline_and_unknown_names():
    decoder = architectures.get("decoder")
    with pytest.raises(ValueError, match="already registered"):
        architectures.register(decoder)
    with pytest.raises(ValueError, match="second baseline"):
        architectures.register(Architecture("other", "other", "k", "o", "DecoderLM", baseline=True))
    with pytest.raises(ValueError, match="imitates 'nothing'"):
        architectures.register(Architecture("copy", "copy", "k", "o", "DecoderLM", imitates="nothing"))
    with pytest.raises(UserError, match="unknown architecture 'rag': choose from decoder, knn_lm, mlp_memory, mlp_mem"):
        architectures.get("rag")
    assert architectures.names() == ("decoder", "knn_lm", "mlp_memory", "mlp_memory_ce")


def test_unregistered_rows_get_a_stand_in_and_come_last():
    assert architectures.style("rag").label == "rag"
    assert architectures.ranked(["rag", "mlp_memory", "decoder"]) == [
        "decoder", "knn_lm", "mlp_memory", "mlp_memory_ce", "rag"]


def test_shared_stages_pull_in_what_they_are_built_from():
    assert closure(["targets"]) == ("decoder", "datastore", "targets")
    assert closure(["datastore", "decoder"]) == ("decoder", "datastore")
    assert closure([]) == ()


# ----------------------------------------------------------------------------------------------
# a toy architecture: the decoder mixed with its train split's unigram distribution
# ----------------------------------------------------------------------------------------------

class UnigramLM(LambdaGridEvaluation, L.LightningModule):
    """log p = logaddexp(log(1-λ) + log p_LM, log λ + log p_unigram), p_unigram the train split's add-one counts."""

    def __init__(self, decoder: str, lambdas: list[float] | None = None, lambda_: float | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=self.EVAL_ONLY)
        self.init_lambda_grid(lambdas, lambda_)
        self.net = load_decoder(decoder).net

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        counts = np.bincount(dm.store.split("train"), minlength=dm.vocab_size) + 1.0
        self.log_unigram = torch.from_numpy(np.log(counts / counts.sum()))

    @torch.no_grad()
    def _eval_step(self, batch: dict[str, torch.Tensor], metric: TokenNLL) -> None:
        logits = self.net(input_ids=batch["input_ids"], use_cache=False).logits
        lp_lm = -token_nll(logits, batch["labels"]).double().flatten()
        metric.update(-interpolate(lp_lm, self.log_unigram[batch["labels"].flatten()], self.lambdas))


class UnigramMix(Architecture):
    def evaluate(self, stages: Stages) -> dict[str, Score]:
        model = {"class_path": self.module, "init_args": {"decoder": str(stages.decoder_run)}}
        return lambda_grid_scores(stages, model, stages.out / "unigram" / stages.tag)


@pytest.fixture
def unigram():
    arch = architectures.register(UnigramMix(name="unigram_mix", label="decoder+unigram", colour="tab:purple",
                                             marker="D", module="UnigramLM", weighs="unigram distribution"))
    yield arch
    architectures.unregister(arch.name)


@pytest.mark.slow  # a whole sweep or 3 kNN evaluations: CI keeps under 15 min; make test-slow
def test_a_toy_architecture_runs_through_a_sweep_into_results_and_the_report(tmp_path, unigram):
    spec = {**TINY, "decoder_sizes": ["200k", "400k", "800k"], "decoder_tokens": 4096, "out": str(tmp_path / "study"),
            "architectures": ["decoder", "unigram_mix"], "objective": "unigram_mix"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    results = pd.read_csv(run_sweep(tmp_path / "spec.yaml"))

    out = tmp_path / "study"
    assert not any((out / d).exists() for d in ("datastores", "targets", "knnlm", "memories"))  # no stage it needs not
    assert len(results) == 3 * 2 * 2 and set(results["arch"]) == {"decoder", "unigram_mix"}
    valid = results[results["split"] == "valid"].set_index(["decoder_size", "arch"])
    for size in spec["decoder_sizes"]:
        dec, uni = valid.loc[(size, "decoder")], valid.loc[(size, "unigram_mix")]
        assert dec["loss"] == math.log(uni["ppl_lambda_0.00"])  # λ=0 is the decoder alone, bit for bit
        assert uni["loss"] <= dec["loss"] + 1e-12 and 0 <= uni["lambda"] <= 1  # λ=0 is in the grid chosen on valid
        assert (uni["params_total"], uni["flops_train_total"]) == (dec["params_total"], dec["flops_train_total"])
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    from mlpmem_lightning.study.recording import is_lambda_point

    for trial in (t for t in study.trials if not is_lambda_point(t)):  # the objective is the toy's valid loss
        assert trial.value == valid.loc[(trial.params["decoder_size"], "unigram_mix"), "loss"]
    trials = pd.read_csv(out / "tiny" / "trials.csv")
    assert {"time_decoder_fit_s", "time_decoder_eval_s", "flops_decoder_train"} <= set(trials.columns)
    assert "time_datastore_s" not in trials.columns

    md = write_report(out / "tiny" / "results.csv", out / "report", bootstrap=20).read_text()
    fits = json.loads((out / "report" / "fits.json").read_text())
    assert "decoder+unigram" in md and "| decoder+unigram | test: 3, valid: 3 |" in md
    assert "unigram_mix" in fits or "*decoder+unigram vs parameters (total) not fitted" in md
    assert "| decoder+unigram | 200k |" in md  # the λ table
