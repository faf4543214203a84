"""Studies that share an ``out`` (issue #13, items 2, 12 and 13): keyed run directories, one table per study,
workers that wait for each other, and a sweep in which nothing finished."""

import subprocess
import sys

import optuna
import pandas as pd
import pytest

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.results import COLUMNS
from mlpmem_lightning.study.spec import SweepSpec
from mlpmem_lightning.study.stages import Stages
from mlpmem_lightning.study.sweep import run_sweep
from tests.helpers import ROOT
from tests.study.test_sweep import write_spec

DECODER_ONLY = {"architectures": ["decoder"], "objective": "decoder", "decoder_sizes": ["200k"]}


def listing(path, pattern="*"):
    return sorted(p.name for p in path.glob(pattern))


def states(out, study):
    """The states of the study's grid trials (its λ and (λ, T) points, added as finished trials, left out)."""
    from mlpmem_lightning.study.recording import is_lambda_point

    trials = optuna.load_study(study_name=study, storage=f"sqlite:///{out / 'optuna.db'}").trials
    return [t.state.name for t in trials if not is_lambda_point(t)]


# -- item 2: keyed directories ---------------------------------------------------------------------
def _stages(tmp_path, store, **overrides) -> Stages:
    spec = SweepSpec.load(write_spec(tmp_path / "spec.yaml", token_store=str(store), **overrides))
    return Stages(spec, "200k", "mem-200k", 0, store)


def test_directories_are_keyed_by_what_changes_their_result(tmp_path, small_store):
    """Each setting moves the directories built from it and no others; what only changes evaluation (λ, the study's
    name, its storage) moves none, so a re-evaluating study reuses every artifact."""
    base = _stages(tmp_path, small_store)
    dirs = lambda s: (s.decoder_run, s.datastore_dir, s.targets_dir)  # noqa: E731
    assert [d.name.rsplit("-", 1)[0] for d in dirs(base)] == ["200k-seed0"] * 3  # readable: size and seed first
    assert dirs(_stages(tmp_path, small_store, study="other", storage="sqlite:///x.db", **{"lambda": 0.25})) \
        == dirs(base)
    for overrides, moved in (({"decoder_tokens": 16384}, 3), ({"decoder_lr": 1e-3}, 3), ({"batch_size": 4}, 3),
                             ({"seq_len": 32}, 3), ({"trainer": "gpu"}, 3), ({"datastore": {"layer": 0}}, 2),
                             ({"knn": {"index": "flat", "k": 32, "keep": 8, "chunk": 2048}}, 1)):
        other = dirs(_stages(tmp_path, small_store, **overrides))
        assert [a != b for a, b in zip(dirs(base), other, strict=True)] == [False] * (3 - moved) + [True] * moved, \
            overrides


def test_an_edited_spec_or_another_lr_builds_beside_the_finished_decoder(tmp_path):
    """Studies sharing an ``out``: a new decoder_tokens or decoder_lr trains a new decoder beside the old one,
    whose checkpoint is left untouched; a study with the same settings reuses it; each study keeps its table."""
    out = tmp_path / "study"
    run_sweep(write_spec(tmp_path / "a.yaml", study="a", **DECODER_ONLY))
    (first,) = (out / "decoders").glob("200k-seed0-*")
    ckpt = first / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns, ckpt.read_bytes()
    run_sweep(write_spec(tmp_path / "b.yaml", study="b", **{**DECODER_ONLY, "decoder_tokens": 16384}))
    run_sweep(write_spec(tmp_path / "c.yaml", study="c", **{**DECODER_ONLY, "decoder_lr": 1e-3}))
    run_sweep(write_spec(tmp_path / "d.yaml", study="d", **DECODER_ONLY))  # a's settings: a's decoder
    assert (ckpt.stat().st_mtime_ns, ckpt.read_bytes()) == before
    assert len(listing(out / "decoders", "200k-seed0-*")) == 3 == len(listing(out / "decoders"))
    tables = {s: pd.read_csv(out / s / "results.csv") for s in "abcd"}
    assert all(set(t["study"]) == {s} and len(t) == 2 for s, t in tables.items())  # decoder x (valid, test)
    tokens = {s: t["train_tokens"].iloc[0] for s, t in tables.items()}
    assert tokens["b"] == 2 * tokens["a"] and tokens["c"] == tokens["d"] == tokens["a"]
    losses = {s: t.set_index("split")["loss"] for s, t in tables.items()}
    assert (losses["d"] == losses["a"]).all() and not (losses["c"] == losses["a"]).all()
    assert not (out / "results.csv").exists()


# -- item 13: one table per study, and a sweep in which nothing finished ---------------------------------
def _fake(monkeypatch, fail=None):
    from mlpmem_lightning.study import pipeline

    def fake_pipeline(spec, decoder_size, memory_size, seed, callbacks=()):
        if fail:
            raise RuntimeError(f"{fail} {decoder_size}")
        row = {c: 0 for c in COLUMNS} | {"study": spec.study, "arch": "mlp_memory", "split": "valid", "loss": 1.0,
                                         "decoder_size": decoder_size, "memory_size": memory_size, "seed": seed}
        return [row], {}

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    monkeypatch.setattr(pipeline, "prepare_tokens", lambda spec: None)


def test_a_second_study_with_the_same_out_keeps_the_first_ones_table(tmp_path, monkeypatch):
    _fake(monkeypatch)
    out = tmp_path / "study"
    first = run_sweep(write_spec(tmp_path / "a.yaml", study="demo"))
    kept = first.read_bytes()
    second = run_sweep(write_spec(tmp_path / "b.yaml", study="demo-lambda-0.25", decoder_sizes=["200k"],
                                  **{"lambda": 0.25}))
    assert first.read_bytes() == kept and first != second
    assert sorted(p.parent.name for p in out.glob("*/results.csv")) == ["demo", "demo-lambda-0.25"]
    assert set(pd.read_csv(first)["study"]) == {"demo"} and len(pd.read_csv(first)) == 2
    assert set(pd.read_csv(second)["study"]) == {"demo-lambda-0.25"} and len(pd.read_csv(second)) == 1


def test_a_sweep_whose_every_trial_failed_is_an_error_quoting_the_first(tmp_path, monkeypatch):
    _fake(monkeypatch, fail="no luck for")
    message = (r"every trial of study 'tiny' failed \(2 trials; no results written\); "
               r"the first, trial 0 \(200k, mem-200k, seed 0\): RuntimeError: no luck for 200k")
    with pytest.raises(UserError, match=message):
        run_sweep(write_spec(tmp_path / "spec.yaml"))
    assert states(tmp_path / "study", "tiny") == ["FAIL", "FAIL"]
    assert not list((tmp_path / "study").rglob("results.csv"))


def test_a_sweep_whose_trials_ran_out_of_gpu_memory_names_the_fix(tmp_path, monkeypatch):
    """On the H200, 4 workers (35 GB each) ran out of memory in every SmolLM2 trial: the error says what to change."""
    from mlpmem_lightning.study import pipeline

    class OutOfMemoryError(RuntimeError):  # named as torch's is: the error attribute records the class name
        pass

    def oom(spec, decoder_size, memory_size, seed, callbacks=()):
        raise OutOfMemoryError(f"CUDA out of memory in {decoder_size}")

    _fake(monkeypatch)
    monkeypatch.setattr(pipeline, "run_pipeline", oom)
    with pytest.raises(UserError, match=r"OutOfMemoryError: CUDA out of memory in 200k; each of N sweep workers may "
                                        r"use 1/N of the GPU's memory: run fewer --workers"):
        run_sweep(write_spec(tmp_path / "spec.yaml"))


def test_a_worker_that_finds_no_point_left_while_others_run_is_not_an_error(tmp_path):
    """`--workers 4` on a 3-point study: the fourth worker finds the queue empty while the others still run their
    trials (none COMPLETE yet). That is not "every trial failed": it ends without an error (found on the H200)."""
    from mlpmem_lightning.study.sweep import finish

    spec = SweepSpec.load(write_spec(tmp_path / "spec.yaml"))
    study = optuna.create_study(study_name=spec.study)
    study.ask()  # RUNNING, held by another worker
    study.enqueue_trial({})  # WAITING
    finish(study, spec)  # no UserError
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # the waiting one, popped and failed
    study.tell(study.trials[0].number, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(UserError, match="every trial of study"):
        finish(study, spec)


def test_a_sweep_with_one_finished_trial_writes_it_and_names_the_failed_points(tmp_path, monkeypatch, caplog):
    from mlpmem_lightning.study import pipeline

    _fake(monkeypatch)
    real = pipeline.run_pipeline

    def half(spec, decoder_size, memory_size, seed, callbacks=()):
        if decoder_size == "400k":
            raise RuntimeError("out of memory")
        return real(spec, decoder_size, memory_size, seed, callbacks)

    monkeypatch.setattr(pipeline, "run_pipeline", half)
    results = run_sweep(write_spec(tmp_path / "spec.yaml"))
    assert list(pd.read_csv(results)["decoder_size"]) == ["200k"]
    assert "1 grid points have no finished trial (trial 1: RuntimeError: out of memory)" in caplog.text


# -- item 12: workers that share artifacts wait for each other -----------------------------------------------
@pytest.mark.slow  # 98 s on CI's 2 cores: `make test-slow`
def test_two_workers_sharing_a_decoder_wait_for_each_other(tmp_path):
    """Two workers started together on one storage, two memory sizes on one decoder: whichever needs the token
    store, decoder, datastore or targets while the other writes it waits, then reuses it. Both exit 0, every trial
    is COMPLETE (none failed, none opened on an emptied queue), and each shared artifact was built once.
    Started as `mlpmem sweep --workers 2` (study/workers.py), which runs two worker processes."""
    spec = write_spec(tmp_path / "spec.yaml", decoder_sizes=["200k"], memory_sizes=["mem-200k", "mem-400k"])
    cmd = [sys.executable, "-m", "mlpmem_lightning.cli", "sweep", "--config", str(spec), "--workers", "2"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = tmp_path / "study"
    logs = [(out / "tiny" / "workers" / f"worker{i}.log").read_text() for i in range(2)]
    assert done.returncode == 0, (done.stdout, done.stderr, logs)
    assert states(out, "tiny") == ["COMPLETE", "COMPLETE"]
    assert not any("being written by another process" in log for log in logs), logs
    for kind in ("decoders", "datastores", "targets"):
        assert len(listing(out / kind, "200k-seed0-*")) == 1, kind
    assert [n.split("-on-")[0] for n in listing(out / "memories")] == ["mem-200k", "mem-400k"]
    results = pd.read_csv(out / "tiny" / "results.csv")
    assert sorted(results[results["arch"] == "mlp_memory"]["memory_size"].unique()) == ["mem-200k", "mem-400k"]


def test_cleanup_spares_a_datastore_another_workers_trial_still_uses(tmp_path):
    """``cleanup: true`` with ``--workers``: two memory sizes on one decoder share its datastore and targets; the
    trial that ends first must not delete them under the other (on the H200 the kNN-LM of the second trial then
    failed with "datastore … does not exist"). The last user deletes them."""
    from types import SimpleNamespace

    from mlpmem_lightning.study import locks
    from mlpmem_lightning.study.stages import Stages

    out = tmp_path / "out"
    dirs = {name: out / name / "n0.1m-seed0-abc" for name in ("datastores", "targets")}
    for d in dirs.values():
        d.mkdir(parents=True)
        (d / "manifest.json").write_text("{}")

    def trial():
        t = SimpleNamespace(out=out, datastore_dir=dirs["datastores"], targets_dir=dirs["targets"],
                            users=locks.Users(out))
        t.exclusive = lambda path: locks.waiting_for(out, path)
        for d in dirs.values():
            t.users.hold(d)
        return t

    first, second = trial(), trial()
    Stages.cleanup(first)
    assert all(d.is_dir() for d in dirs.values())  # the second trial still holds them
    Stages.cleanup(second)
    assert not any(d.exists() for d in dirs.values())  # the last user deletes them
