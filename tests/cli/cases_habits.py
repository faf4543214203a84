"""Bad-input catalogue rows for the papers' evaluation protocol (issue #16): sliding-window settings.

Each `Case` here is run by `tests/cli/test_bad_inputs.py` and listed in docs/bad-inputs.md.
"""

from __future__ import annotations

from tests.cli.catalogue import Case, _fit

CASES: list = [
    Case("evaluation", "--data.eval_stride without --data.eval_context", "--data.eval_stride needs --data.eval_context",
         lambda t, fx: _fit(fx, t / "run", "--data.eval_stride", "8")),
    Case("evaluation", "a sliding-window stride longer than its context", "1 <= stride <= context",
         lambda t, fx: _fit(fx, t / "run", "--data.eval_context", "16", "--data.eval_stride", "32")),
    Case("evaluation", "a sliding-window context longer than the model's", "--data.eval_context 5000 exceeds the "
         "model's context", lambda t, fx: _fit(fx, t / "run", "--data.eval_context", "5000")),
]
