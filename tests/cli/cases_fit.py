"""Bad-input catalogue rows for fit runs: run directories, resume, checkpoints, training history (issue #13).

Each `Case` here is run by `tests/cli/test_bad_inputs.py` and listed in docs/bad-inputs.md.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tests.cli.catalogue import TRAINER, Case, _copy, _fit, _truncate

_HELD: list[int] = []  # lock descriptors held by the test process itself (released when it exits)


def _run(t: Path, fx) -> Path:
    """A copy of the small decoder's finished run (the fixture's own is never touched)."""
    return _copy(fx.decoder, t / "run")


def _same_fit(fx, run: Path, *extra: str) -> list[str]:
    """The command the small decoder was fitted with (tests/conftest.py), into ``run``, plus ``extra``."""
    return _fit(fx, run, "--data.batch_size", "16", "--model.max_tokens", str(150 * 16 * 128), *extra)


def _locked(t: Path, fx) -> Path:
    """A run directory whose writer lock is held by another open file (as another fit's would be)."""
    run = t / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD.append(fd)
    return run


def _cut_last(t: Path, fx) -> Path:
    run = _run(t, fx)
    _truncate(run / "checkpoints" / "last.ckpt")
    return run


def _memory(fx, t: Path, *extra: str) -> list[str]:
    return ["fit", *TRAINER, "--model", "MemoryLM", "--model.decoder", str(fx.decoder),
            "--data.token_store", str(fx.store), "--data.seq_len", "128", "--data.targets", str(fx.targets),
            "--trainer.default_root_dir", str(t / "mem"), *extra]


CASES: list = [
    Case("fit runs", "a fit into a run trained with another learning rate",
         "was trained with other settings (saved != asked: model.init_args.lr: 0.003 != 0.0001)",
         lambda t, fx: _same_fit(fx, _run(t, fx), "--model.lr", "1e-4")),
    Case("fit runs", "a re-fit with another --model.size into the same run",
         "saved != asked: model.init_args.size: '200k' != '800k'",
         lambda t, fx: _same_fit(fx, _run(t, fx), "--model.size", "800k")),
    Case("fit runs", "a fit into a run trained with another batch size (and so another step budget)",
         "data.batch_size: 16 != 4",
         lambda t, fx: _fit(fx, _run(t, fx), "--model.max_tokens", str(150 * 16 * 128))),
    Case("fit runs", "a second fit into a run directory another fit is writing",
         "is being trained by another process (pid",
         lambda t, fx: _fit(fx, _locked(t, fx), "--model.max_tokens", "8192")),
    Case("fit runs", "a run whose last.ckpt is truncated", "cannot be read",
         lambda t, fx: _same_fit(fx, _cut_last(t, fx))),
    Case("fit runs", "--model.lambda_ off the λ grid", "--model.lambda_ 0.33 is not on the λ grid",
         lambda t, fx: _memory(fx, t, "--model.lambda_", "0.33")),
    Case("fit runs", "an empty λ grid (--model.lambdas [])", "the λ grid is empty",
         lambda t, fx: _memory(fx, t, "--model.lambdas", "[]")),
    Case("fit runs", "the step as a CUDA graph with gradient accumulation", "overwrites the gradients at each step",
         lambda t, fx: _fit(fx, t / "run", "--model.cuda_graph", "true", "--trainer.accumulate_grad_batches", "2",
                            "--model.max_tokens", "8192")),
]
