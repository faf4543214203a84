"""`mlpmem test` reports its headline loss at a λ chosen on valid, never at the best λ on test (issue #16).

Choosing λ on the split that is then reported flatters the mixtures. ``test`` therefore takes λ from
``--model.lambda_`` or, when that is unset, from the same run directory's ``validate/metrics.csv``
(``val/best_lambda`` of the last validate, provided ``validate/config.yaml`` evaluated the same model on
the same data). Without either, the test's best λ is still logged, but only under names that say so
(``test/loss_at_best_test_lambda``); ``test/loss`` and ``test/ppl`` are left out.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

from mlpmem_lightning.lightning.evaluation import DEFAULT_LAMBDAS, LambdaGridEvaluation

# data settings that change what is scored (batching and workers do not)
_DATA_KEYS = ("token_store", "seq_len", "eval_context", "eval_stride")


def _same_evaluation(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Same model (λ settings aside), same checkpoint, same scored tokens."""
    def model(cfg: dict[str, Any]) -> dict[str, Any]:
        m = dict(cfg.get("model") or {})
        m["init_args"] = {k: v for k, v in (m.get("init_args") or {}).items()
                          if k not in LambdaGridEvaluation.EVAL_ONLY}
        return m

    data = [{k: (c.get("data") or {}).get(k) for k in _DATA_KEYS} for c in (saved, now)]
    return model(saved) == model(now) and saved.get("ckpt_path") == now.get("ckpt_path") and data[0] == data[1]


def _last_best_lambda(metrics: Path) -> float | None:
    with open(metrics, newline="") as f:
        values = [r["val/best_lambda"] for r in csv.DictReader(f) if r.get("val/best_lambda")]
    return float(values[-1]) if values else None


def lambda_from_validate(run: Path, now: dict[str, Any]) -> tuple[float | None, str]:
    """(λ, why) from ``run/validate``: λ is None when no matching validate run is there; ``why`` says which."""
    metrics, config = run / "validate" / "metrics.csv", run / "validate" / "config.yaml"
    if not metrics.is_file() or not config.is_file():
        return None, f"no validate run in {run / 'validate'}"
    if not _same_evaluation(yaml.safe_load(config.read_text()) or {}, now):
        return None, f"the validate run in {run / 'validate'} evaluated other settings"
    lam = _last_best_lambda(metrics)
    if lam is None:
        return None, f"{metrics} holds no val/best_lambda"
    grid = (now.get("model") or {}).get("init_args", {}).get("lambdas") or DEFAULT_LAMBDAS
    nearest = min(grid, key=lambda x: abs(x - lam))  # logged in float32: 0.44999998 is the grid's 0.45
    if not math.isclose(nearest, lam, abs_tol=1e-5):
        return None, f"val/best_lambda {lam} in {metrics} is not on this λ grid"
    return float(nearest), f"val/best_lambda of {metrics}"
