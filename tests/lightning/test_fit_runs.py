"""A fit's run directory across re-runs, crashes and a full disk (issue #13, items 2, 3, 4, 8).

Every check reads what the run left on disk (torch.load of the checkpoints, metrics.csv's rows, file hashes),
never what the command printed about it.
"""

from __future__ import annotations

import csv
import errno
import hashlib
from pathlib import Path

import pytest
import torch

from mlpmem_lightning.cli import main
from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.lightning import run_io
from mlpmem_lightning.lightning.run_dir import differing_keys
from tests.helpers import EXP

CRASH = ["--trainer.callbacks+=tests.lightning.test_decoder_lm.CrashAt", "--trainer.callbacks.step"]


def fit(store, run: Path, *extra: str) -> list[str]:
    """A fit of a few steps of 4 x 64 tokens (validation every 3 steps, so rarely on the last one)."""
    return ["fit", "--config", str(EXP / "trainer/cpu.yaml"), "--config", str(EXP / "model/decoder_200k.yaml"),
            "--data.token_store", str(store), "--data.seq_len", "64", "--data.batch_size", "4",
            "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run), *extra]


def step(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=False)["global_step"]


def hashes(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def train_steps(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_max_steps_wins_the_last_step_is_saved_and_a_finished_rerun_does_nothing(small_store, tmp_path, capsys):
    run = tmp_path / "run"
    args = fit(small_store, run, "--model.max_tokens", str(10**9), "--trainer.max_steps", "7")
    main(args)
    assert step(run / "checkpoints" / "last.ckpt") == 7  # max_steps over max_tokens, and not the val step 6
    assert step(run / "checkpoints" / "best.ckpt") == 6
    before = hashes(run)
    capsys.readouterr()
    main(args)  # returns: exit 0
    out = capsys.readouterr().out
    assert "is finished (step 7 of 7" in out and "resuming" not in out
    assert hashes(run) == before  # config.yaml, hparams.yaml, checkpoints, metrics.csv, TensorBoard: untouched


def test_metrics_survive_a_crash_and_the_resume(small_store, tmp_path):
    run = tmp_path / "run"
    budget = ["--trainer.max_steps", "8", "--trainer.log_every_n_steps", "1"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(fit(small_store, run, *budget, *CRASH, "5"))
    assert step(run / "checkpoints" / "last.ckpt") == 3
    first = train_steps(run)
    assert first == list(range(5))  # logged steps 0..4 before the crash at step 5
    run_cli(fit(small_store, run, *budget))
    steps = train_steps(run)
    assert steps[:5] == first  # the crashed run's rows are kept, in place
    assert sorted(set(steps)) == list(range(8))  # every step of the budget has its row
    assert steps[5:] == list(range(3, 8))  # the resumed run re-trains 3, 4 after its checkpoint and appends


def test_a_full_disk_leaves_the_previous_last_checkpoint_whole(small_store, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    args = fit(small_store, run, "--trainer.max_steps", "5")
    write = run_io._write

    def full(path: Path, data) -> None:
        if path.name.startswith("last.ckpt.") and (path.parent / "last.ckpt").exists():
            path.write_bytes(bytes(data[: len(data) // 2]))  # half of it, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(run_io, "_write", full)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mlpmem: error:")]
    last = run / "checkpoints" / "last.ckpt"
    assert exit_info.value.code == 2
    assert errors == [f"mlpmem: error: no space left on the device writing {last}: free some space or pass another "
                      "--out, then run the same command again (finished artifacts are reused, the partial one is "
                      "resumed or rebuilt)"]
    assert step(last) == 3  # the checkpoint before the failed write, whole
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(run_io, "_write", write)
    main(args)  # the same command resumes from it and finishes
    assert step(last) == 5


def test_fast_dev_run_leaves_no_checkpoint_and_no_logs(small_store, tmp_path):
    run = tmp_path / "run"
    main(fit(small_store, run, "--trainer.fast_dev_run", "true"))
    assert not run.exists() or [p for p in run.rglob("*") if p.is_file() and p.name != ".lock"] == []


def test_which_keys_change_the_result():
    saved = {"model": {"init_args": {"lr": 0.003, "compile": False, "new_option": 1}},
             "trainer": {"enable_progress_bar": True, "max_steps": 10, "callbacks": [{"a": 1}]},
             "data": {"num_workers": 0, "batch_size": 4}}
    now = {"model": {"init_args": {"lr": 0.003, "compile": True}},
           "trainer": {"enable_progress_bar": False, "max_steps": 12, "callbacks": None},
           "data": {"num_workers": 4, "batch_size": 8}}
    assert differing_keys(saved, now) == ["data.batch_size: 4 != 8", "trainer.max_steps: 10 != 12"]
