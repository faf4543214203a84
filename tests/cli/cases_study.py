"""Bad-input catalogue rows for studies: sweep, results, report (issue #13).

Each `Case` here is run by `tests/cli/test_bad_inputs.py` and listed in docs/bad-inputs.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.cli.catalogue import Case, _results, _spec, _text


def _loss(t: Path, *values) -> Path:
    """A fittable results file (3 sizes) whose first losses are ``values``."""
    path = _results(t)
    df = pd.read_csv(path)
    df["loss"] = df["loss"].astype(object)
    for i, value in enumerate(values):
        df.loc[i, "loss"] = value
    df.to_csv(path, index=False)
    return path


def _failing_spec(t: Path, fx) -> Path:
    """A spec on the session's small token store whose every trial fails in its decoder fit (seq_len 5000 exceeds
    the 200k rung's context): the sweep has run, and nothing finished."""
    return _spec(t, token_store=str(fx.store), prepare={"vocab_size": 4096, "max_documents": 2000},
                 seq_len=5000, architectures=["decoder"], objective="decoder", decoder_tokens=4096)


CASES: list = [
    # -- sweep specs
    Case("sweep", "a spec that is a YAML list", "holds a YAML list, not a mapping of keys",
         lambda t, fx: ["sweep", "--config", str(_text(t / "spec.yaml", "- study: x\n- decoder_sizes: [200k]\n"))]),
    Case("sweep", "a spec that is a YAML scalar", "holds a YAML str, not a mapping of keys",
         lambda t, fx: ["sweep", "--config", str(_text(t / "spec.yaml", "sweeps/demo.yaml\n"))]),
    Case("sweep", "a spec that is not valid YAML", "is not valid YAML",
         lambda t, fx: ["sweep", "--config", str(_text(t / "spec.yaml", "study: [x\n"))]),
    Case("sweep", "a study name that cannot name a folder", "study 'a/b': name it with letters",
         lambda t, fx: ["sweep", "--config", str(_spec(t, study="a/b"))]),
    Case("sweep", "a non-positive decoder_lr", "decoder_lr -0.1 must be a positive number",
         lambda t, fx: ["sweep", "--config", str(_spec(t, decoder_lr=-0.1))]),
    Case("sweep", "a decoder_lr mapping that is not {from: PATH}",
         "decoder_lr {'file': 'x.csv'}: write decoder_lr: {from",
         lambda t, fx: ["sweep", "--config", str(_spec(t, decoder_lr={"file": "x.csv"}))]),
    Case("sweep", "a stores_at_once that is not a whole number >= 1", "stores_at_once 0 must be a whole number >= 1",
         lambda t, fx: ["sweep", "--config", str(_spec(t, stores_at_once=0))]),
    Case("sweep", "a base that is not a transformers model directory",
         "not a transformers model directory (config.json, weights, tokenizer): make one with",
         lambda t, fx: ["sweep", "--config", str(_spec(t, base=str(t), decoder_sizes=None))]),
    Case("sweep", "an unknown targets_temperature", "targets_temperature 'median': choose rule",
         lambda t, fx: ["sweep", "--config", str(_spec(t, targets_temperature="median"))]),
    Case("sweep", "decoder_budgets that are not positive", "decoder_budgets [0]: give positive multiples",
         lambda t, fx: ["sweep", "--config", str(_spec(t, decoder_budgets=[0]))]),
    Case("lr-search", "an lr_search grid of fewer than 3 learning rates",
         "lr_search grid [0.001, 0.002]: give 3 or more",
         lambda t, fx: ["lr-search", "--config", str(_spec(t, lr_search={"grid": [0.001, 0.002]}))]),
    Case("lr-search", "an unknown lr_search key", "unknown lr_search keys steps: use budget, grid, max_extensions",
         lambda t, fx: ["lr-search", "--config", str(_spec(t, lr_search={"steps": 3}))]),
    Case("sweep", "every trial of the sweep failed", "every trial of study 'bad' failed",
         lambda t, fx: ["sweep", "--config", str(_failing_spec(t, fx))]),
    # -- results and report
    Case("results", "a loss column holding text",
         "column loss holds text ('4.1 nats' in line 2, decoder s0 seed 1 test)",
         lambda t, fx: ["report", "--results", str(_loss(t, "4.1 nats")), "--out", str(t / "r")]),
    Case("results", "NaN or inf losses",
         "non-finite loss (NaN/inf/empty) in 2 rows: decoder s0 seed 1 test (line 2)",
         lambda t, fx: ["report", "--results", str(_loss(t, float("nan"), float("inf"))), "--out", str(t / "r")]),
]
