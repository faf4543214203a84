"""scripts/study_state.sh: which Optuna storage a returned study.tgz resumes from (the GPU calls' hand-over)."""

from __future__ import annotations

import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "study_state.sh"
STUDY = "runs/sweeps/scaling-h200"


def _db(path: Path, states: list[str]) -> None:
    con = sqlite3.connect(path)
    con.execute("create table trials (state text)")
    con.executemany("insert into trials values (?)", [(s,) for s in states])
    con.commit()
    con.close()


def _states(path: Path) -> list[str]:
    return sorted(s for (s,) in sqlite3.connect(path).execute("select state from trials"))


def _pack(tmp: Path, at_end: bool, snapshot: bool = True) -> Path:
    src = tmp / "src"
    (src / STUDY / "scaling-h200").mkdir(parents=True)
    _db(src / STUDY / "optuna.db", ["COMPLETE", "COMPLETE"])  # the live storage
    if snapshot:
        _db(src / STUDY / "optuna-snapshot.db", ["COMPLETE"])  # the copy taken before the pack
    (src / STUDY / "scaling-h200" / "results.csv").write_text("trial\n0\n")
    if at_end:
        (src / STUDY / "packed-at-end").touch()
    tgz = tmp / "study.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src / "runs", arcname="runs")
    return tgz


def _run(cwd: Path, tgz: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(tgz)], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("at_end, want", [(True, ["COMPLETE", "COMPLETE"]), (False, ["COMPLETE"])])
def test_resumes_from_the_final_storage_or_the_snapshot(tmp_path: Path, at_end: bool, want: list[str]) -> None:
    """A pack made after the sweep stopped gives its storage; one made while it ran gives the consistent snapshot."""
    work = tmp_path / "repo"
    work.mkdir()
    done = _run(work, _pack(tmp_path, at_end))
    assert done.returncode == 0, done.stderr
    assert _states(work / ".carry/state/optuna.db") == want
    assert _states(work / "analysis/results/scaling-h200/partial/optuna.db") == want
    assert (work / "analysis/results/scaling-h200/partial/results.csv").read_text() == "trial\n0\n"


def test_a_pack_without_storage_is_one_line(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    done = _run(work, _pack(tmp_path, at_end=False, snapshot=False))
    assert done.returncode == 1
    assert done.stderr.strip().startswith("mlpmem: error: ") and len(done.stderr.strip().splitlines()) == 1
    assert not (work / ".carry/state/optuna.db").exists()


def test_another_study_resumes_from_its_own_storage(tmp_path: Path) -> None:
    """NAME=<study>: its storage goes to .carry/state-<study>/ and its partial/ folder, never the default study's."""
    src = tmp_path / "src" / "runs/sweeps/other"
    (src / "other").mkdir(parents=True)
    _db(src / "optuna.db", ["COMPLETE"])
    (src / "packed-at-end").touch()
    (src / "other" / "results.csv").write_text("trial\n7\n")
    tgz = tmp_path / "study.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "src" / "runs", arcname="runs")
    work = tmp_path / "repo"
    work.mkdir()
    done = subprocess.run(["bash", str(SCRIPT), str(tgz)], cwd=work, capture_output=True, text=True,
                          env={"NAME": "other", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert _states(work / ".carry/state-other/optuna.db") == ["COMPLETE"]
    assert (work / "analysis/results/other/partial/results.csv").read_text() == "trial\n7\n"
    assert not (work / ".carry/state").exists() and not (work / "analysis/results/scaling-h200").exists()
