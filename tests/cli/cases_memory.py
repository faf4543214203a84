"""Bad-input catalogue rows for the memory's defaults, the CE-only control and the kNN temperature (issue #15).

Each `Case` here is run by `tests/cli/test_bad_inputs.py` and listed in docs/bad-inputs.md.
"""

from __future__ import annotations

from pathlib import Path

from tests.cli.catalogue import TRAINER, Case, _spec


def _memory(fx, t: Path, *extra: str) -> list[str]:
    """A MemoryLM fit on the small decoder without --data.targets."""
    return ["fit", *TRAINER, "--model", "MemoryLM", "--model.decoder", str(fx.decoder), "--data.token_store",
            str(fx.store), "--data.seq_len", "128", "--trainer.default_root_dir", str(t / "mem"), *extra]


CASES = [
    Case("memory", "a memory (α > 0) fitted without --data.targets", "or --model.alpha 0 for the cross-entropy-only",
         lambda t, fx: _memory(fx, t)),
    Case("memory", "the CE-only control (α = 0) in offline mode, which has no stored keys",
         "--model.mode offline reads the keys stored", lambda t, fx: _memory(fx, t, "--model.alpha", "0",
                                                                              "--model.mode", "offline")),
    Case("memory", "a dropout of 1 or more", "memory dropout 1.0 must lie in [0, 1)",
         lambda t, fx: _memory(fx, t, "--model.dropout", "1.0")),
    Case("knn-lm", "a kNN temperature grid with a value <= 0", "kNN temperatures must be finite and > 0",
         lambda t, fx: ["validate", *TRAINER, "--model", "KNNLM", "--model.decoder", str(fx.decoder),
                        "--model.datastore", str(fx.datastore), "--model.temperatures", "[1.0, 0.0]",
                        "--data.token_store", str(fx.store), "--data.seq_len", "128",
                        "--trainer.default_root_dir", str(t / "knn")]),
    Case("sweep", "control_sizes that are not decoder sizes of the study", "are not decoder sizes of the study",
         lambda t, fx: ["sweep", "--config", str(_spec(t, control_sizes=["800k"]))]),
    Case("sweep", "a temperatures grid with a value <= 0", "must be a non-empty list of numbers > 0",
         lambda t, fx: ["sweep", "--config", str(_spec(t, temperatures=[1.0, -2.0]))]),
    Case("sweep", "a targets_temperature_scale <= 0", "targets_temperature_scale 0 must be a number > 0",
         lambda t, fx: ["sweep", "--config", str(_spec(t, targets_temperature_scale=0))]),
]
