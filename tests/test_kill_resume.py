"""SIGKILL at a random point, re-run the same command: `prepare` and the fit of both trained modules.

The datastore, targets and sweep have their own kill tests (test_knn_lm, test_targets, test_sweep).
KNNLM has no fit: it is evaluation over a finished datastore, whose building is what gets killed.
"""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mlpmem_lightning.core import artifacts
from tests.cli.test_cli import EXP, MLPMEM
from tests.killing import KILL_SEED, kill_rng, kill_when, reap

pytestmark = pytest.mark.integration  # runs whole stages end to end

SEQ, BATCH, STEPS, SLEEP = 128, 16, 16, 0.25


class Slow(Callback):
    """Sleeps after each step, so a kill lands in the middle of a few-second fit (numerics untouched)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(SLEEP)


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != artifacts.LOCK}


def test_prepare_killed_then_rerun_gives_the_same_bytes(small_store, tmp_path):
    """Killed after a random milestone (tokenizer, first or second split): the rerun rebuilds it byte for byte."""
    rng = kill_rng("prepare")
    out = tmp_path / "tok"
    argv = MLPMEM + ["prepare", "--corpus", "wiki-summaries", "--vocab-size", "4096", "--max-documents", "2000",
                     "--num-proc", "1", "--out", str(out)]
    # splits are written valid, test, train; train.npy is followed by the manifest within milliseconds,
    # so the last milestone is test.npy (about 0.8 s before the end on this machine)
    milestone = rng.choice(["tokenizer.json", "valid.npy", "test.npy"])
    group = kill_when(argv, lambda: (out / milestone).exists(), delay=rng.uniform(0, 0.3))
    try:
        assert not artifacts.is_complete(out)
        # the killed run's orphaned datasets workers are still alive here: they must not hold the lock
        rerun = subprocess.run(argv, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr[-1000:]
    finally:
        reap(group)
    assert _files(out) == _files(small_store), f"MLPMEM_KILL_SEED={KILL_SEED}"


def _last_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")["global_step"]


def _kill_fit_and_resume(args: list[str], run: Path, name: str) -> None:
    """Fit to completion once; fit again, SIGKILL at a random time after the first checkpoint,
    re-run the same command; it must resume and end with the uninterrupted run's weights."""
    rng = kill_rng(name)
    budget = ["--trainer.val_check_interval", "2", "--model.max_tokens", str(STEPS * BATCH * SEQ)]
    slow = ["--trainer.callbacks+=tests.test_kill_resume.Slow", *budget]  # the sleep touches no numerics
    subprocess.run(MLPMEM + args + budget + ["--trainer.default_root_dir", str(run / "whole")], check=True,
                   capture_output=True)
    killed = MLPMEM + args + slow + ["--trainer.default_root_dir", str(run / "killed")]
    reap(kill_when(killed, lambda: (run / "killed" / "checkpoints" / "last.ckpt").is_file(),
                   delay=rng.uniform(0, SLEEP * (STEPS - 8))))
    at = _last_step(run / "killed")
    assert 2 <= at < STEPS, f"killed after step {at} of {STEPS}"
    out = subprocess.run(killed, check=True, capture_output=True, text=True)
    assert "resuming from" in out.stdout, out.stdout[-2000:]
    assert _last_step(run / "killed") == STEPS

    def state(sub: str) -> dict[str, torch.Tensor]:
        path = run / sub / "checkpoints" / "last.ckpt"
        return torch.load(path, weights_only=False, map_location="cpu")["state_dict"]

    whole, resumed = state("whole"), state("killed")
    assert whole.keys() == resumed.keys()
    # CPU fp32 with deterministic algorithms: the resumed run, which continued the data order from
    # the checkpoint's step, ends with exactly the uninterrupted run's weights
    diff = {k: (whole[k] - resumed[k]).abs().max().item() for k in whole if not torch.equal(whole[k], resumed[k])}
    assert not diff, f"killed after step {at} (MLPMEM_KILL_SEED={KILL_SEED}): {diff}"


def test_decoder_fit_killed_resumes_to_the_same_weights(small_store, tmp_path):
    args = ["fit", "--config", str(EXP / "trainer/cpu.yaml"), "--config", str(EXP / "model/decoder_200k.yaml"),
            "--data.token_store", str(small_store), "--data.seq_len", str(SEQ), "--data.batch_size", str(BATCH),
            "--trainer.enable_progress_bar", "false"]
    _kill_fit_and_resume(args, tmp_path, "fit-decoder")


def test_memory_fit_killed_resumes_to_the_same_weights(small_targets, small_decoder, small_store, tmp_path):
    args = ["fit", "--config", str(EXP / "trainer/cpu.yaml"), "--model", "MemoryLM",
            "--model.decoder", str(small_decoder), "--data.token_store", str(small_store),
            "--data.targets", str(small_targets), "--data.seq_len", str(SEQ), "--data.batch_size", str(BATCH),
            "--trainer.enable_progress_bar", "false",
            "--model.dropout", "0"]  # with dropout a resumed run draws other masks: equivalent, not identical
    _kill_fit_and_resume(args, tmp_path, "fit-memory")


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``path``'s artifact lock, as a writer in progress does."""
    code = ("import sys, time; from mlpmem_lightning.core.artifacts import artifact_lock\n"
            f"with artifact_lock({str(path)!r}):\n    print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("stage", ["prepare", "datastore", "targets", "index"])
def test_a_second_writer_gets_a_clear_error(stage, small_decoder, small_store, small_datastore, tmp_path):
    """While one process writes an artifact, a second writer of the same directory exits 2 at once."""
    target = {"prepare": tmp_path / "tok", "datastore": tmp_path / "ds", "targets": tmp_path / "tg",
              "index": tmp_path / "ds-copy"}[stage]
    if stage == "index":
        shutil.copytree(small_datastore, target)
    argv = {"prepare": ["prepare", "--corpus", "wiki-summaries", "--max-documents", "200", "--out", str(target)],
            "datastore": ["datastore", "--decoder", str(small_decoder), "--data", str(small_store), "--out",
                          str(target), "--device", "cpu"],
            "targets": ["targets", "--datastore", str(small_datastore), "--out", str(target), "--k", "8", "--keep",
                        "4", "--device", "cpu"],
            "index": ["datastore", "--decoder", str(small_decoder), "--data", str(small_store), "--out", str(target),
                      "--device", "cpu", "--batch-size", "16", "--index", "ivfflat", "--nlist", "16"]}[stage]
    holder = _hold_lock(target)
    try:
        out = subprocess.run(MLPMEM + argv, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    errors = [line for line in out.stderr.splitlines() if line.startswith("mlpmem: error")]
    assert out.returncode == 2 and len(errors) == 1 and "is being written by another process" in errors[0], out.stderr
