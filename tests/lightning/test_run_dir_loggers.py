"""Checkpoints, ``config.yaml`` and logs stay in the run directory whatever ``--trainer.logger`` is (issue #16 item 3).

With W&B (offline) or a CSV logger pointed elsewhere, a fit must still write ``<run>/config.yaml`` and
``<run>/checkpoints/{best,last}.ckpt``, resume from them after a crash, and be readable as ``--decoder RUN``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.models.loading import load_decoder
from tests.lightning.test_fit_runs import CRASH, fit, step, train_steps


def _fit_resume_and_load(store, run: Path, logger: list[str]) -> None:
    budget = ["--trainer.max_steps", "6", "--trainer.log_every_n_steps", "1", *logger]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(fit(store, run, *budget, *CRASH, "4"))
    last = run / "checkpoints" / "last.ckpt"
    assert (run / "config.yaml").is_file() and step(last) == 3
    run_cli(fit(store, run, *budget))  # resumes from the run's last.ckpt, not from a logger's directory
    assert step(last) == 6 and (run / "checkpoints" / "best.ckpt").is_file()
    loaded = load_decoder(run)  # what --decoder RUN reads
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    weights = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    for name, value in loaded.net.state_dict().items():
        assert torch.equal(value, weights[name])


def test_csv_logger_elsewhere_keeps_the_run_in_its_directory(small_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, logs = tmp_path / "run", tmp_path / "elsewhere"
    _fit_resume_and_load(small_store, run, [
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(logs),
        "--trainer.logger.name", "exp", "--trainer.logger.version", "v0"])
    assert set(train_steps(logs / "exp" / "v0")) >= {4, 5}  # the logger's own place still gets its metrics
    assert not (tmp_path / "config.yaml").exists() and not list(logs.rglob("*.ckpt"))


def test_wandb_offline_fit_resumes_from_the_run_directory(small_store, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    _fit_resume_and_load(small_store, run, ["--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
                                            "--trainer.logger.project", "proj"])
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "proj").exists()
    assert (run / "wandb").is_dir()  # W&B's files with the run, not in the working directory
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_help_offers_no_optimizer_option_the_modules_would_ignore(capsys):
    """The modules configure their own AdamW (OptimSettings; the CUDA-graph step's capturable one)."""
    with pytest.raises(SystemExit):
        run_cli(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--trainer.max_steps" in out and "--optimizer" not in out and "--lr_scheduler" not in out
