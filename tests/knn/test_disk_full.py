"""`datastore` and `targets` on a full disk: ENOSPC at allocation, one line, nothing complete (issue 13, item 4)."""

from __future__ import annotations

import errno
import os

import pytest

from mlpmem_lightning.cli import main
from mlpmem_lightning.core import artifacts


def _full(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("stage", ["datastore", "targets"])
def test_a_full_disk_is_one_line_naming_the_file(stage, small_decoder, small_store, small_datastore, tmp_path,
                                                 capsys, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", _full)
    out = tmp_path / stage
    argv = (["datastore", "--decoder", str(small_decoder), "--data", str(small_store), "--batch-size", "16"]
            if stage == "datastore" else ["targets", "--datastore", str(small_datastore), "--k", "8", "--keep", "4"])
    with pytest.raises(SystemExit) as code:
        main([*argv, "--out", str(out), "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlpmem: error:")]
    first = "keys.npy" if stage == "datastore" else "ids.npy"
    assert code.value.code == 2 and len(errors) == 1, errors
    assert f"no space left on the device writing {out / first}" in errors[0]
    assert not artifacts.is_complete(out)
