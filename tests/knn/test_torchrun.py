"""`mlpmem datastore` and `mlpmem targets` under torchrun (issue #16 item 5): 2 gloo processes on CPU whose ranks,
address and port come from the launcher's environment (``--standalone``: a free port, nothing fixed), writing
files byte-identical to one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlpmem_lightning.knn.datastore import Datastore

ROOT = Path(__file__).resolve().parents[2]


def torchrun(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # the launcher sets them
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mlpmem_lightning", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_datastore_and_targets_are_byte_identical(small_datastore, small_targets, small_decoder,
                                                           small_store, tmp_path):
    out = tmp_path / "ds"
    torchrun("datastore", "--decoder", str(small_decoder), "--data", str(small_store), "--out", str(out),
             "--batch-size", "16", "--device", "cpu")
    for name in ("keys.npy", "values.npy"):
        assert (small_datastore / name).read_bytes() == (out / name).read_bytes()
    assert Datastore(out).fingerprint == Datastore(small_datastore).fingerprint
    targets = tmp_path / "t"
    torchrun("targets", "--datastore", str(small_datastore), "--out", str(targets), "--index", "ivfflat", "--k", "64",
             "--keep", "32", "--nprobe", "16", "--device", "cpu")
    for name in ("ids.npy", "probs.npy"):
        assert (small_targets / name).read_bytes() == (targets / name).read_bytes()
