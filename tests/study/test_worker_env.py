"""The environment each sweep worker runs in (study/workers.worker_env): its share of the GPU and of the cores."""

from __future__ import annotations

import os

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
