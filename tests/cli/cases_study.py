"""Bad-input catalogue rows for studies: sweep, results, report (issue #13).

Each `Case` here is run by `tests/cli/test_bad_inputs.py` and listed in docs/bad-inputs.md.
"""

from __future__ import annotations

from tests.cli.catalogue import Case  # noqa: F401  (rows are Case(...))

CASES: list = []
