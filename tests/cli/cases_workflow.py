"""Bad-input catalogue rows for the researcher's workflow (issue #16): sweep overrides, swept settings, storage
drivers, and `mlpmem collect`.

Each `Case` here is run by `tests/cli/test_bad_inputs.py` and listed in docs/bad-inputs.md.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.cli.catalogue import Case, _spec, _text


def _best_on_test(t: Path) -> Path:
    """A kNN-LM run whose test picked λ on test (no --model.lambda_) and that was never validated."""
    cfg = {"model": {"class_path": "mlpmem_lightning.lightning.knn_lm.KNNLM", "init_args": {"lambda_": None}}}
    _text(t / "knn" / "test" / "config.yaml", yaml.safe_dump(cfg))
    _text(t / "knn" / "test" / "metrics.csv", "epoch,step,test/lambda,test/loss\n0,0,0.3,4.0\n")
    return t / "knn"


CASES: list = [
    Case("sweep", "a storage URL whose database driver is not installed",
         "needs the database driver pymysql, which is not installed: pip install 'mlpmem-lightning[mysql]'",
         lambda t, fx: ["sweep", "--config", str(_spec(t)), "--storage", "mysql+pymysql://u:p@localhost/db"]),
    Case("sweep", "--set without KEY=VALUE", "write KEY=VALUE",
         lambda t, fx: ["sweep", "--config", str(_spec(t)), "--set", "knn.k"]),
    Case("sweep", "a swept setting that is not a list of numbers", "a swept setting is a non-empty list of numbers",
         lambda t, fx: ["sweep", "--config", str(_spec(t)), "--set", "alpha=[0.5, high]"]),
    Case("sweep", "a sampler range with low above high", "must be numbers with low <= high",
         lambda t, fx: ["sweep", "--config", str(_spec(t, sampler={
             "name": "tpe", "n_trials": 2, "params": {"alpha": {"low": 0.9, "high": 0.1}}}))]),
    Case("collect", "a run directory that does not exist", "does not exist: pass run directories",
         lambda t, fx: ["collect", str(t / "nope"), "--out", str(t / "r.csv")]),
    Case("collect", "a folder with no test run", "has a test run (test/metrics.csv)",
         lambda t, fx: ["collect", str(_text(t / "empty" / "x.txt", "").parent), "--out", str(t / "r.csv")]),
    Case("collect", "a λ picked on test, never validated", "has no validate run and its test picked λ on test",
         lambda t, fx: ["collect", str(_best_on_test(t)), "--out", str(t / "r.csv")]),
]
