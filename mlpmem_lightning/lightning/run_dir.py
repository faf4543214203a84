"""A fit's run directory: one writer, one configuration, and a finished run left alone (issue #13).

`mlpmem fit` resumes from ``<run>/checkpoints/last.ckpt``. That is only right when the run was started with
the same settings, so before anything is written:

- **One writer.** The fit holds the run directory's lock (:func:`core.artifacts.artifact_lock`) and writes
  its pid into it; a second fit into the same directory gets one line naming that pid.
- **Same configuration.** The saved ``config.yaml`` is compared with this command's configuration, key by
  key; a difference in anything that changes the trained weights is refused with one line naming the keys.
  :data:`NEUTRAL` lists what does not change them (progress bar, logging, validation schedule, workers, …).
- **Finished is finished.** A ``last.ckpt`` at the step budget means the run is done: nothing is trained
  and nothing rewritten (not ``config.yaml``, not ``hparams.yaml``, not a checkpoint).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError

# Dotted keys of the fit's configuration that do not change the trained weights (fnmatch patterns).
NEUTRAL = (
    "config", "ckpt_path", "print_config",
    "checkpoint.*",  # which checkpoints are kept, not what is trained
    "trainer.default_root_dir",  # the run itself
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.logger", "trainer.logger.*",
    "trainer.log_every_n_steps",
    "trainer.callbacks", "trainer.callbacks.*", "trainer.profiler", "trainer.enable_checkpointing",
    "trainer.barebones", "trainer.detect_anomaly",
    # validation: when and on how much is measured, not what is trained
    "trainer.val_check_interval", "trainer.check_val_every_n_epoch", "trainer.limit_val_batches",
    "trainer.num_sanity_val_steps", "trainer.limit_test_batches", "trainer.limit_predict_batches",
    "trainer.accelerator", "trainer.strategy",  # resuming on another machine (the global batch is compared)
    "data.num_workers", "data.eval_batch_size",
    "model.init_args.compile", "model.init_args.cuda_graph", "model.init_args.lambdas", "model.init_args.lambda_",
)


def logs_into_run_dir(loggers: Any, run: str) -> None:
    """Point each configured logger whose ``save_dir`` is unset (or W&B's default ``.``) at the run directory,
    so that its files (W&B's ``wandb/``, TensorBoard's events) stay with the run's checkpoints and config."""
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = getattr(logger, "init_args", None) if not isinstance(logger, dict) else logger.get("init_args")
        if init is not None and "save_dir" in init and init["save_dir"] in (None, ".", "./"):
            init["save_dir"] = run


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    if not isinstance(cfg, dict):
        return {prefix.rstrip("."): cfg}
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal, or two spellings of one existing path (relative and absolute)."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b and os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return False


def differing_keys(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Keys both configurations hold with values that change the result (a key only one side has is skipped:
    an option added or removed by a package upgrade)."""
    a, b = flatten(saved), flatten(now)
    return [f"{k}: {a[k]!r} != {b[k]!r}" for k in sorted(a.keys() & b.keys())
            if not any(fnmatch.fnmatchcase(k, p) for p in NEUTRAL) and not _same(a[k], b[k])]


def check_config(run: Path, now_yaml: str) -> None:
    """Refuse to resume (or re-enter) ``run`` when its saved ``config.yaml`` differs in a result-changing key."""
    path = run / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML: pass another --trainer.default_root_dir") from None
    diffs = differing_keys(saved, yaml.safe_load(now_yaml) or {})
    if diffs:
        raise UserError(f"{run} was trained with other settings (saved != asked: {', '.join(diffs)}): "
                        f"pass another --trainer.default_root_dir, or the settings saved in {path} to resume it")


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` a Lightning checkpoint records (memory-mapped: the weights are not read)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # noqa: BLE001  (torch raises RuntimeError, EOFError, UnpicklingError, …)
        raise UserError(f"{path} cannot be read ({type(err).__name__}): it is truncated or not a checkpoint; "
                        "delete it to restart the run from its beginning") from None
    return int(ckpt.get("global_step", 0))


def finished_line(run: Path, last: Path, max_steps: int) -> str | None:
    """The line to print when ``last`` already holds the step budget (``max_steps``), else None."""
    if max_steps is None or max_steps <= 0 or not last.is_file():
        return None
    step = checkpoint_step(last)
    if step < max_steps:
        return None
    return (f"mlpmem: {run} is finished (step {step} of {max_steps} in {last}): nothing to train, nothing "
            "rewritten; pass another --trainer.default_root_dir to train again")


@contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Hold the run directory's writer lock, with this process's pid in it for the one who is refused."""
    lock, held = run / artifacts.LOCK, ExitStack()
    try:
        held.enter_context(artifacts.artifact_lock(run))
    except UserError:
        try:
            pid = lock.read_text().strip() or "unknown"
        except OSError:
            pid = "unknown"
        raise UserError(f"{run} is being trained by another process (pid {pid}): wait for it to finish, or pass "
                        "another --trainer.default_root_dir") from None
    with held:
        lock.write_text(f"{os.getpid()}\n")
        yield
