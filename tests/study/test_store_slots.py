"""Disk-bound studies: at most ``stores_at_once`` trials hold a datastore and targets, and a trial whose stores do
not fit the disk is refused before it writes them (on the H200, four workers' stores filled the 64 GiB disk)."""

from __future__ import annotations

import threading
from collections import namedtuple

import numpy as np
import pytest

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import disk, locks


def test_a_third_trial_waits_until_one_of_two_slots_is_given_back(tmp_path, monkeypatch):
    monkeypatch.setattr(locks.Slots, "POLL", 0.02)
    first, second, third = (locks.Slots(tmp_path, 2) for _ in range(3))
    first.acquire()
    second.acquire()
    waits, got = [], threading.Event()
    worker = threading.Thread(target=lambda: (third.acquire(lambda: waits.append(1)), got.set()))
    worker.start()
    assert not got.wait(0.5)  # both slots taken: the third trial waits (and says so, once)
    assert waits == [1]
    first.release()
    assert got.wait(10)  # the slot given back is taken
    worker.join()
    assert third.fd is not None and first.fd is None
    for s in (second, third):
        s.release()


def test_no_limit_takes_no_lock(tmp_path):
    slots = [locks.Slots(tmp_path, None) for _ in range(5)]
    for s in slots:
        s.acquire()  # never waits
    assert all(s.fd is None for s in slots)


def test_store_bytes_are_those_of_the_arrays(tmp_path):
    """Against the arrays a datastore (float16 keys, int32 values) and its targets (int32 ids, float16 probs) hold."""
    rows, width, keep = 1000, 48, 16
    arrays = [np.zeros((rows, width), np.float16), np.zeros(rows, np.int32), np.zeros((rows, keep), np.int32),
              np.zeros((rows, keep), np.float16)]
    assert disk.store_bytes(rows, width, keep) == sum(a.nbytes for a in arrays)
    assert disk.store_bytes(rows, width, None) == sum(a.nbytes for a in arrays[:2])


def test_a_store_larger_than_the_free_space_is_refused_in_one_line(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda where: usage(100 * 10**9, 91 * 10**9, 9 * 10**9))
    disk.check_room(tmp_path / "not" / "yet", 8 * 10**9, "the datastore of n0.1m-seed0")  # fits: no error
    with pytest.raises(UserError, match=r"the datastore of n0.1m-seed0 need 17.1 GB and .* has 9.0 GB free: .*"
                                        r"stores_at_once lower"):
        disk.check_room(tmp_path, 17_100_000_000, "the datastore of n0.1m-seed0")


def test_bytes_already_written_count_against_the_need(tmp_path):
    (tmp_path / "ds").mkdir()
    np.save(tmp_path / "ds" / "keys.npy", np.ones((256, 64), np.float16))
    assert disk.allocated(tmp_path / "ds", tmp_path / "absent") >= 256 * 64 * 2
