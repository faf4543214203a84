"""scripts/pack.sh: the packs a GPU call returns are whole, however the call ends (stopped, or killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[1] / "scripts" / "pack.sh"


def _tree(root: Path, files: int, size: int) -> set[str]:
    (root / "runs").mkdir(parents=True)
    for i in range(files):
        (root / "runs" / f"f{i}.bin").write_bytes(os.urandom(size))
    return {f"runs/f{i}.bin" for i in range(files)}


def _members(tgz: Path) -> set[str]:
    with tarfile.open(tgz) as tar:  # a truncated or half-written pack fails here
        return {m.name for m in tar.getmembers() if m.isfile()}


def _bash(script: str, cwd: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", f"source {PACK}\n{script}"], cwd=cwd, env={**os.environ, "OUT": str(out)},
                            start_new_session=True)


def test_periodic_packs_then_a_final_one_with_what_came_last(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    files = _tree(tmp_path, 3, 1000)
    proc = _bash("pack_every 0.2 study.tgz runs; sleep 1; touch runs/last; pack_stop; pack_once study.tgz runs",
                 tmp_path, out)
    assert proc.wait(timeout=30) == 0
    assert _members(out / "study.tgz") == files | {"runs/last"}
    assert sorted(p.name for p in out.iterdir()) == ["study.tgz"]  # no part left behind


def test_a_kill_mid_pack_leaves_the_last_whole_pack(tmp_path):
    """Packs of ~24 MB take a while to write: read while they are replaced, and after the call is killed, study.tgz
    is always a whole pack."""
    out = tmp_path / "out"
    out.mkdir()
    files = _tree(tmp_path, 3, 8 << 20)
    proc = _bash("pack_every 0.05 study.tgz runs; sleep 30", tmp_path, out)
    checks = 0
    deadline = time.monotonic() + 20
    while checks < 5 and time.monotonic() < deadline:
        time.sleep(0.3)
        if (out / "study.tgz").exists():  # read while the next pack is being written and renamed over it
            assert _members(out / "study.tgz") == files
            checks += 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert checks == 5
    assert _members(out / "study.tgz") == files


def test_stopping_during_a_pack_leaves_no_writer_behind(tmp_path):
    """pack_stop while a periodic pack is half-written: no tar of the loop runs on (it would take the CPU from the
    final pack), and the final pack is whole and holds what came last."""
    out = tmp_path / "out"
    out.mkdir()
    files = _tree(tmp_path, 3, 8 << 20)
    for _ in range(3):
        proc = _bash("pack_every 0.01 study.tgz runs; sleep 0.4; pack_stop; "
                     'if pgrep -f "czf $OUT/.study.tgz" >/dev/null; then exit 3; fi; '  # a pack still writing
                     "touch runs/last; pack_once study.tgz runs", tmp_path, out)
        assert proc.wait(timeout=60) == 0
        assert _members(out / "study.tgz") == files | {"runs/last"}
        assert sorted(p.name for p in out.iterdir()) == ["study.tgz"]
        (tmp_path / "runs" / "last").unlink()
