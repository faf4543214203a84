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


# -- a resumed study: the stores of interrupted trials, and the bytes other slots will still write ------------------
def _trial(tmp_path, store, **overrides):
    from mlpmem_lightning.study.spec import SweepSpec
    from mlpmem_lightning.study.stages import Stages
    from tests.study.test_sweep import write_spec

    spec = SweepSpec.load(write_spec(tmp_path / "spec.yaml", token_store=str(store), stores_at_once=2,
                                     **{"cleanup": True, **overrides}))
    return Stages(spec, "200k", "mem-200k", 0, store)


def _store(path, mib, age):
    """A store directory of ``mib`` MiB of written blocks, last modified ``age`` seconds ago."""
    import os
    import time

    path.mkdir(parents=True)
    np.save(path / "keys.npy", np.ones(mib << 19, np.float16))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def _disk_of(monkeypatch, out, capacity):
    """A file system of ``capacity`` bytes that holds only what is under ``out`` (allocated blocks, as df counts)."""
    monkeypatch.setattr(disk, "free_bytes", lambda where: capacity - disk.allocated(out))


def _need(trial):
    return disk.store_bytes(len(trial.store.split("train")), trial.rung.d_model, trial.spec.knn_settings.keep)


def test_stores_of_interrupted_trials_are_deleted_oldest_first_until_the_trial_fits(tmp_path, small_store,
                                                                                      monkeypatch):
    """Before: they stayed, the resumed study started other points beside them, and the H200's disk filled."""
    trial = _trial(tmp_path, small_store)
    old = _store(trial.out / "targets" / "n0.1m-seed0-aaaaaaaa", 4, age=300)
    newer = _store(trial.out / "datastores" / "n0.2m-seed0-bbbbbbbb", 4, age=100)
    in_use = _store(trial.out / "datastores" / "n0.85m-seed0-cccccccc", 4, age=900)  # oldest, but a trial uses it
    user = locks.Users(trial.out)
    user.hold(in_use)
    slack = 2**20  # the lock files' blocks
    _disk_of(monkeypatch, trial.out, _need(trial) + disk.allocated(newer, in_use) + slack)  # room once `old` is gone
    try:
        trial.make_room(with_targets=True)
        assert not old.exists() and newer.exists() and in_use.exists()
    finally:
        user.release_all()
        trial.release()


def test_without_cleanup_nothing_is_deleted_and_the_trial_is_refused_in_one_line(tmp_path, small_store, monkeypatch):
    trial = _trial(tmp_path, small_store, cleanup=False)
    stale = _store(trial.out / "targets" / "n0.1m-seed0-aaaaaaaa", 4, age=300)
    _disk_of(monkeypatch, trial.out, _need(trial) + disk.allocated(stale) // 2)
    try:
        with pytest.raises(UserError, match=r"^the datastore and targets of 200k-seed0 need .* GB free: free some"):
            trial.make_room(with_targets=True)
        assert stale.exists()
    finally:
        trial.release()


def test_what_another_slot_will_still_write_is_reserved_and_its_stores_are_kept(tmp_path, small_store, monkeypatch):
    """Each store's arrays are reserved when they are created: a trial that checked only the free space could start
    beside another that had taken its slot but not yet reserved its arrays."""
    trial = _trial(tmp_path, small_store)
    theirs = _store(trial.out / "datastores" / "n6.4m-seed0-dddddddd", 4, age=900)  # old, but its slot is live
    other = locks.Slots(trial.out, 2)
    other.acquire()
    their_need = disk.allocated(theirs) + 50 * 2**20  # 50 MiB still to be written
    other.claim([theirs], their_need)
    mine = _need(trial)
    _disk_of(monkeypatch, trial.out, mine + their_need - 2**20)  # 1 MiB short of both
    try:
        with pytest.raises(UserError, match=r"besides the 0.1 GB other trials' stores will still write"):
            trial.make_room(with_targets=True)
        assert theirs.exists()
        assert [n["dirs"] for n in trial.slot.others()] == [[str(theirs)]]
        other.release()
        assert trial.slot.others() == []  # a slot given back is no one's
        trial.make_room(with_targets=True)  # the other trial ended: its bytes are no longer reserved
    finally:
        other.release()
        trial.release()


def test_store_dir_puts_the_stores_and_their_disk_checks_elsewhere(tmp_path, small_store, monkeypatch):
    """``store_dir`` (e.g. /dev/shm): the stores go there, and so do the room check and the
    reclaiming of interrupted trials' stores; the decoder and the locks stay under ``out``."""
    shm = tmp_path / "shm"
    trial = _trial(tmp_path, small_store, store_dir=str(shm))
    assert trial.datastore_dir.parent == shm / "datastores" and trial.targets_dir.parent == shm / "targets"
    assert trial.decoder_run.is_relative_to(trial.out) and not trial.decoder_run.is_relative_to(shm)
    stale = _store(shm / "targets" / "n0.1m-seed0-aaaaaaaa", 4, age=300)
    asked = []
    monkeypatch.setattr(disk, "free_bytes", lambda where: asked.append(where) or _need(trial) - 1 + 2**20
                        - disk.allocated(shm))  # short of room while `stale` is there
    try:
        trial.make_room(with_targets=True)
        assert not stale.exists() and set(asked) == {shm}
    finally:
        trial.release()
