"""`mlpmem collect`: results rows from hand-made runs.

The λ rule is checked on synthetic run directories (metrics written here, the expected loss computed from them);
the accounting (sizes, parameters, tokens, FLOPs) and losses against the sweep's own rows for the same runs: the
sweep's stages are the same LightningCLI commands a user types, so its run directories are hand-made runs, and
its results.csv is an independent computation of the rows collect must rebuild.
"""

import math

import pandas as pd
import pytest
import yaml

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.collect import _scores, find_runs
from mlpmem_lightning.study.results import COLUMNS, NUMERIC


def make_run(root, test_metrics, valid_metrics=None, lambda_=None):
    """A run directory with test/ (and validate/) as `mlpmem test|validate --trainer.default_root_dir` leave it."""
    (root / "test").mkdir(parents=True)
    cfg = {"model": {"class_path": "mlpmem_lightning.lightning.knn_lm.KNNLM", "init_args": {"lambda_": lambda_}}}
    (root / "test" / "config.yaml").write_text(yaml.safe_dump(cfg))
    pd.DataFrame([{"epoch": 0, "step": 0, **test_metrics}]).to_csv(root / "test" / "metrics.csv", index=False)
    if valid_metrics:
        (root / "validate").mkdir()
        pd.DataFrame([valid_metrics]).to_csv(root / "validate" / "metrics.csv", index=False)
    return root, cfg


GRID = {0.0: 60.0, 0.3: 40.0, 0.5: 35.0}


def test_test_loss_is_taken_at_the_lambda_chosen_on_valid(tmp_path):
    """The test ran at its own best λ (0.5); the row must hold the test loss at valid's λ (0.3)."""
    test = {"test/lambda": 0.5, "test/loss": math.log(GRID[0.5]),
            **{f"test/ppl_lambda_{k:.2f}": v for k, v in GRID.items()}}
    valid = {"val/lambda": 0.3, "val/loss": 3.9, "val/ppl_lambda_0.30": math.exp(3.9)}
    run, cfg = make_run(tmp_path / "knn", test, valid)
    rows = {r["split"]: r for r in _scores(run, architectures.get("knn_lm"), cfg)}
    assert rows["test"]["lambda"] == 0.3 and rows["test"]["loss"] == pytest.approx(math.log(40.0))
    assert rows["valid"]["loss"] == 3.9 and rows["valid"]["ppl_lambda_0.30"] == pytest.approx(math.exp(3.9))


def test_a_test_at_a_fixed_lambda_counts_without_validation_and_a_lambda_picked_on_test_does_not(tmp_path):
    test = {"test/lambda": 0.3, "test/loss": 3.7, **{f"test/ppl_lambda_{k:.2f}": v for k, v in GRID.items()}}
    run, cfg = make_run(tmp_path / "fixed", test, lambda_=0.3)
    assert [(r["split"], r["lambda"], r["loss"]) for r in _scores(run, architectures.get("knn_lm"), cfg)] == [
        ("test", 0.3, 3.7)]
    run, cfg = make_run(tmp_path / "best-on-test", test)
    with pytest.raises(UserError, match="picked λ on test"):
        _scores(run, architectures.get("knn_lm"), cfg)


def test_runs_are_found_under_folders(tmp_path):
    test = {"test/lambda": 0.0, "test/loss": 4.0}
    make_run(tmp_path / "a" / "knnlm", test)
    make_run(tmp_path / "a" / "b" / "memory", test)
    assert find_runs([tmp_path / "a"]) == [tmp_path / "a" / "b" / "memory", tmp_path / "a" / "knnlm"]
    assert find_runs([tmp_path / "a" / "knnlm"]) == [tmp_path / "a" / "knnlm"]
    with pytest.raises(UserError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run under"):
        find_runs([tmp_path / "empty"])


@pytest.mark.slow
def test_collect_rebuilds_the_sweeps_rows_from_its_run_directories(tmp_path):
    """Every architecture, the CE-only control included (a MemoryLM at α = 0 without targets: collect must call it
    mlp_memory_ce and charge it no datastore or search, as the sweep does)."""
    from mlpmem_lightning.cli import main
    from mlpmem_lightning.study.sweep import run_sweep
    from tests.study.test_sweep import TINY

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**TINY, "decoder_sizes": ["200k"], "control_sizes": ["200k"],
                                    "out": str(tmp_path / "out")}))
    swept = pd.read_csv(run_sweep(spec))
    main(["collect", str(tmp_path / "out"), "--out", str(tmp_path / "collected.csv")])
    got = pd.read_csv(tmp_path / "collected.csv")
    assert list(got.columns[:len(COLUMNS)]) == list(COLUMNS)
    keys = ["arch", "split"]
    swept, got = swept.set_index(keys).sort_index(), got.set_index(keys).sort_index()
    assert list(got.index) == list(swept.index)
    assert "mlp_memory_ce" in set(got.index.get_level_values("arch"))
    for col in [c for c in NUMERIC if c != "seed"] + [c for c in swept.columns if c.startswith("ppl_lambda_")]:
        pd.testing.assert_series_equal(got[col].astype(float), swept[col].astype(float), rtol=1e-6, check_names=False)
    for col in ("params_non_embedding", "lr", "epochs", "temperature", "last10_improvement"):  # the #15 columns
        pd.testing.assert_series_equal(got[col].astype(float), swept[col].astype(float), rtol=1e-6, check_names=False)
    for col in ("decoder_size", "seed", "token_store_fingerprint", "decoder_fingerprint", "converged"):
        assert list(got[col]) == list(swept[col])
    assert list(got["memory_size"].fillna("")) == list(swept["memory_size"].fillna(""))
    # a memory fitted by hand without --model.size is its decoder's matched memory, as MemoryLM builds it
    for config in (tmp_path / "out" / "memories").glob("*/config.yaml"):
        fit = yaml.safe_load(config.read_text())
        fit["model"]["init_args"]["size"] = None
        config.write_text(yaml.safe_dump(fit))
    main(["collect", str(tmp_path / "out"), "--out", str(tmp_path / "again.csv")])
    again = pd.read_csv(tmp_path / "again.csv").set_index(keys).sort_index()
    pd.testing.assert_series_equal(again["params_memory"], got["params_memory"])
    assert list(again["memory_size"].fillna("")) == list(got["memory_size"].fillna(""))
