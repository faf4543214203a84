"""`mlpmem test` reports its headline at a λ chosen on valid (issue #16 item 3): from ``--model.lambda_`` or the
run's validate; without either, the best λ on test is logged only under a name that says so."""

from __future__ import annotations

import math

import pytest

from mlpmem_lightning.cli.lightning import run_cli
from tests.lightning.test_knn_lm import knn_args
from tests.lightning.test_memory_lm import mem_args


def metrics(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def grid_best(m: dict[str, float]) -> tuple[float, float]:
    """(λ, ppl) of the lowest test perplexity of the logged grid: the reference for the labelled figure."""
    lam, ppl = min(((float(k.rsplit("_", 1)[1]), v) for k, v in m.items() if k.startswith("test/ppl_lambda_")),
                   key=lambda x: x[1])
    return lam, ppl


def check_headline_at_valid_lambda(val: dict[str, float], test: dict[str, float]) -> None:
    lam = round(val["val/best_lambda"], 2)
    assert test["test/lambda"] == pytest.approx(lam)
    assert test["test/ppl"] == test[f"test/ppl_lambda_{lam:.2f}"]
    assert "test/loss_at_best_test_lambda" not in test


def check_labelled_best_on_test(test: dict[str, float]) -> None:
    assert not {"test/loss", "test/ppl", "test/lambda"} & test.keys()
    _, ppl = grid_best(test)
    assert test["test/ppl_at_best_test_lambda"] == pytest.approx(ppl, rel=1e-6)
    assert math.exp(test["test/loss_at_best_test_lambda"]) == pytest.approx(ppl, rel=1e-5)


@pytest.mark.slow  # a whole sweep or 3 kNN evaluations: CI keeps under 15 min; make test-slow
def test_knn_lm_test_takes_lambda_from_the_runs_validate(small_datastore, small_decoder, small_store, tmp_path,
                                                         capsys):
    run = ["--model.k", "64", "--trainer.default_root_dir", str(tmp_path / "knn")]
    val = metrics(run_cli(knn_args("validate", small_decoder, small_store, small_datastore, *run)))
    test = metrics(run_cli(knn_args("test", small_decoder, small_store, small_datastore, *run)))
    check_headline_at_valid_lambda(val, test)
    assert "chosen on valid" in capsys.readouterr().out
    # another k than the validate evaluated: its λ is not taken
    other = ["--model.k", "32", "--trainer.default_root_dir", str(tmp_path / "knn")]
    check_labelled_best_on_test(metrics(run_cli(knn_args("test", small_decoder, small_store, small_datastore,
                                                         *other))))
    assert "evaluated other settings" in capsys.readouterr().out


def test_knn_lm_test_without_validate_labels_the_best_test_lambda(small_datastore, small_decoder, small_store,
                                                                  tmp_path):
    run = ["--model.k", "64", "--trainer.default_root_dir", str(tmp_path / "fresh")]
    check_labelled_best_on_test(metrics(run_cli(knn_args("test", small_decoder, small_store, small_datastore, *run))))


def test_memory_test_takes_lambda_from_the_runs_validate(memory_run, small_targets, small_decoder, small_store,
                                                         tmp_path):
    import shutil

    memory_run = shutil.copytree(memory_run, tmp_path / "run")  # the shared fit stays as other modules found it
    ckpt = ["--ckpt_path", str(memory_run / "checkpoints" / "best.ckpt")]
    fresh = metrics(run_cli(mem_args("test", small_decoder, small_store, small_targets, tmp_path / "r", *ckpt)))
    check_labelled_best_on_test(fresh)
    val = metrics(run_cli(mem_args("validate", small_decoder, small_store, small_targets, memory_run, *ckpt)))
    test = metrics(run_cli(mem_args("test", small_decoder, small_store, small_targets, memory_run, *ckpt)))
    check_headline_at_valid_lambda(val, test)
