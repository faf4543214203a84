"""The environment each sweep worker runs in (study/workers.worker_env): its share of the GPU and of the cores."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest

from mlpmem_lightning.study import workers


@pytest.mark.parametrize("cores, n, threads", [(16, 4, "4"), (16, 3, "5"), (2, 4, "1"), (1, 1, "1")])
def test_each_worker_gets_its_share_of_the_cores(monkeypatch, cores, n, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    env = workers.worker_env(n)
    assert env["OMP_NUM_THREADS"] == threads
    assert float(env[workers.FRACTION_ENV]) == pytest.approx(1 / n, abs=1e-6)
    assert env[workers.LOG_TIME_ENV] == "1"


def test_a_users_thread_count_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert workers.worker_env(4)["OMP_NUM_THREADS"] == "7"


def test_workers_log_with_timestamps(monkeypatch):
    """A worker's stage lines carry the time (phases are timed from the logs); a user's plain runs do not."""
    import logging

    from mlpmem_lightning import cli

    for stamped, fmt in (("1", "%(asctime)s %(message)s"), (None, "%(message)s")):
        monkeypatch.setattr(cli.log, "handlers", [])
        if stamped:
            monkeypatch.setenv(workers.LOG_TIME_ENV, stamped)
        else:
            monkeypatch.delenv(workers.LOG_TIME_ENV, raising=False)
        cli._setup_logging()
        assert isinstance(cli.log.handlers[0], logging.StreamHandler)
        assert cli.log.handlers[0].formatter._fmt == fmt


@pytest.mark.parametrize("gpus, n", [(["0", "1"], 2), (["0", "1"], 3), (["2", "5", "7"], 7), (["0"], 4), ([], 2)])
def test_workers_are_dealt_out_one_gpu_each_with_the_memory_share_of_that_gpu(monkeypatch, gpus, n):
    """Brute force: deal the workers round the GPUs by hand and count who shares each one."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    envs = [workers.worker_env(n, i, gpus) for i in range(n)]
    if len(gpus) < 2:  # one GPU (or none): every worker sees it, with 1/n of its memory
        assert all("CUDA_VISIBLE_DEVICES" not in e and float(e[workers.FRACTION_ENV]) == pytest.approx(1 / n, abs=1e-6)
                   for e in envs)
        return
    dealt = {g: [i for i in range(n) if gpus[i % len(gpus)] == g] for g in gpus}
    for g, mine in dealt.items():
        for i in mine:
            assert envs[i]["CUDA_VISIBLE_DEVICES"] == g
            assert float(envs[i][workers.FRACTION_ENV]) == pytest.approx(1 / len(mine), abs=1e-6)


def test_the_visible_gpus_are_the_users_list_when_set(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1")
    assert workers.visible_gpus() == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert workers.visible_gpus() == []


def test_run_processes_gives_each_task_a_free_slots_gpu(monkeypatch, tmp_path):
    """Tasks run ``workers`` at a time; each takes a slot no running task holds, so two never share a GPU."""
    running: set[str] = set()
    lock, seen = threading.Lock(), []

    def fake_run(cmd, stdout, stderr, env):
        with lock:
            assert env["CUDA_VISIBLE_DEVICES"] not in running
            running.add(env["CUDA_VISIBLE_DEVICES"])
            seen.append(env["CUDA_VISIBLE_DEVICES"])
        time.sleep(0.05)
        with lock:
            running.discard(env["CUDA_VISIBLE_DEVICES"])
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(workers, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(workers.subprocess, "run", fake_run)
    workers.run_processes([["sizes"]] * 6, 2, tmp_path, "task")
    assert len(seen) == 6 and set(seen) == {"0", "1"}
