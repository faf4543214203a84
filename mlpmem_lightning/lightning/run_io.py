"""What a fit writes into its run directory, written so that nothing the run already has is lost (issue #13).

- :class:`AppendingCSVLogger`: ``metrics.csv`` survives a resume or a re-run. Lightning's CSV logger deletes the
  file when it starts in a non-empty directory; this one appends (a header that gains a column is rewritten
  to a temporary file and renamed). Steps re-trained after a resume appear again, after the earlier rows.
- :class:`AtomicCheckpointIO`: a checkpoint is written to a temporary file beside it, fsynced and renamed, so
  a full disk or a kill leaves the previous ``last.ckpt`` whole; ENOSPC names the checkpoint's own path.
- :class:`RunCheckpoint`: ``last.ckpt`` also holds the step training ended on (the budget's last one), which
  validation rarely lands on; ``fast_dev_run`` leaves no checkpoint.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlpmem_lightning.core import artifacts


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):  # continue its columns: a new one rewrites the header
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:
        """Lightning's deletes ``metrics.csv`` here; the run's history is kept."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        tmp = artifacts.tmp_path(path)
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        artifacts.fsync_rename(tmp, path)


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, appending to an existing ``metrics.csv`` instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _write(path: Path, data: memoryview) -> None:
    """Write and fsync ``data`` to ``path`` (the step a full disk fails; tests replace it)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file in the checkpoint's directory, then rename: never half a checkpoint.

    Lightning's own writes through a temporary file in ``/tmp`` and copies it over (not atomic across file
    systems), and a full disk then names ``/tmp/tmpXXXX``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first: torch reports a failed file write as a RuntimeError
        tmp = artifacts.tmp_path(path)
        try:
            _write(tmp, buffer.getbuffer())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(err.errno, os.strerror(err.errno), str(path)) from None
            raise


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (``--checkpoint.*``), with the end of training made right.

    Lightning saves ``last.ckpt`` at the end of training only when it never saved one in this process, so the
    budget's last step is lost whenever validation does not land on it, and it saves one under
    ``fast_dev_run``, which should write nothing. Here: at the end, ``last.ckpt`` at the final step unless it
    is already there; under ``fast_dev_run``, nothing. Checkpoint state keeps ModelCheckpoint's key, so runs
    checkpointed before resume with their best score.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run or not self.save_last:
            return
        if self._last_global_step_saved == trainer.global_step and self._last_checkpoint_saved:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"ModelCheckpoint{kwargs!r}"
