"""Content records, pre-allocation and --out checks of `core/artifacts.py` (issue 13, items 4, 7 and 14)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time

import numpy as np
import pytest

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError


def _artifact(tmp_path, arr: np.ndarray, name: str = "a.npy"):
    out = tmp_path / "art"
    out.mkdir()
    np.save(out / name, arr)
    artifacts.write_manifest(out, "thing", {"files": artifacts.file_records(out, (name,))})
    return out


def test_a_small_file_is_hashed_whole(tmp_path):
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)
    assert artifacts.sample_hash(tmp_path / "f") == hashlib.sha256(b"100000\0" + data).hexdigest()


def test_a_rewritten_array_of_the_same_size_is_refused(tmp_path):
    out = _artifact(tmp_path, np.arange(50_000, dtype=np.uint16))
    assert artifacts.read_manifest(out, "thing")["files"]["a.npy"]["size"] == (out / "a.npy").stat().st_size
    np.save(out / "a.npy", np.arange(50_000, dtype=np.uint16)[::-1])  # same length, same header
    with pytest.raises(UserError, match="does not match its manifest's content hash"):
        artifacts.read_manifest(out, "thing")


def test_probs_scaled_ten_times_are_refused(tmp_path):
    probs = np.random.default_rng(0).dirichlet(np.ones(8), size=4000).astype(np.float16)
    out = _artifact(tmp_path, probs, "probs.npy")
    np.save(out / "probs.npy", (probs * 10).astype(np.float16))
    with pytest.raises(UserError, match="probs.npy does not match"):
        artifacts.read_manifest(out, "thing")


def test_a_truncated_file_is_refused_by_its_size(tmp_path):
    out = _artifact(tmp_path, np.zeros(10_000, dtype=np.int32))
    with open(out / "a.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(UserError, match="has 1000 bytes but its manifest records"):
        artifacts.read_manifest(out, "thing")


def test_a_large_file_is_sampled_not_read(tmp_path):
    """A 1 GiB (sparse) file: 64 blocks of 64 KiB are read, so the check costs milliseconds; a change inside a
    sampled block (the first) is seen, the size is part of the hash."""
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    start = time.perf_counter()
    before = artifacts.sample_hash(path)
    elapsed = time.perf_counter() - start
    with open(path, "r+b") as f:
        f.write(b"x")
    assert artifacts.sample_hash(path) != before and elapsed < 2.0, elapsed
    with open(path, "r+b") as f:
        f.truncate((1 << 30) + 1)
    assert artifacts.sample_hash(path) != before


def test_an_old_manifest_without_records_loads_and_warns_once(tmp_path, caplog):
    out = tmp_path / "old"
    out.mkdir()
    artifacts.write_manifest(out, "thing", {"N": 1})
    with caplog.at_level(logging.WARNING, logger=artifacts.log.name):
        for _ in range(3):
            assert artifacts.read_manifest(out, "thing")["N"] == 1
    assert sum("has no content records" in r.getMessage() for r in caplog.records) == 1


def test_a_manifest_that_is_a_list_or_lacks_a_key(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text("[]")
    with pytest.raises(UserError, match="holds a JSON list"):
        artifacts.read_manifest(tmp_path / "m", "thing")
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"kind": "thing"}))
    with pytest.raises(UserError, match="lacks N"):
        artifacts.read_manifest(tmp_path / "m", "thing", required=("N",))


def test_allocation_reserves_the_blocks(tmp_path):
    """A memory map over a sparse file has no blocks behind it (SIGBUS when the disk fills); allocated, it has."""
    arr = artifacts.allocate_npy(tmp_path / "k.npy", np.float16, (1 << 20, 8))
    assert arr.shape == (1 << 20, 8)
    st = os.stat(tmp_path / "k.npy")
    assert st.st_blocks * 512 >= st.st_size  # every byte has a block


def test_allocation_on_a_full_disk_is_enospc_naming_the_file(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as err:
        artifacts.allocate_npy(tmp_path / "k.npy", np.float16, (1000, 8))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "k.npy")


def test_out_checks(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        artifacts.check_out_dir(tmp_path / "f")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError, match="symlink loop"):
        artifacts.check_out_dir(tmp_path / "a")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: pretend the kernel says no, as it does on a read-only mount
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(ro) else real(p, mode, **kw))
    with pytest.raises(UserError, match="cannot write in"):
        artifacts.check_out_dir(ro / "new" / "out")
    artifacts.check_out_dir(tmp_path / "fresh" / "out")  # a new folder under a writable one is fine
