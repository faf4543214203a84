"""The sweep: spec validation, and a study killed mid-trial that resumes without rerunning finished trials."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.results import COLUMNS
from mlpmem_lightning.study.sweep import SweepSpec, run_sweep
from tests.helpers import SWEEPS
from tests.killing import kill_rng

pytestmark = pytest.mark.integration  # runs whole stages end to end

TINY = {"study": "tiny", "decoder_sizes": ["200k", "400k"], "corpus": "wiki-summaries",
        "prepare": {"vocab_size": 1024, "max_documents": 400}, "seq_len": 64, "batch_size": 8,
        "decoder_tokens": 8192, "memory_tokens": 8192,
        "knn": {"index": "flat", "k": 16, "keep": 8, "chunk": 2048}}


def only(out, pattern):
    """The one path under ``out`` matching ``pattern`` (run and artifact directories end in a hash of their config)."""
    found = sorted(out.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def write_spec(path, **overrides):
    spec = {**TINY, "out": str(path.parent / "study"), **overrides}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "unknown keys bogus"),
    ({"decoder_sizes": ["tiny"]}, "unknown decoder size"),
    ({"memory_sizes": ["mem-x"]}, "unknown memory size"),
    ({"sampler": "cmaes"}, "sampler"),
    ({"knn": {"kk": 3}}, "unknown knn keys"),
    ({"lambda": 1.5}, "must lie in"),
    ({"trainer": "tpu"}, "trainer 'tpu': choose one of cpu, gpu"),
    ({"knn": {"backend": "nope"}}, "knn backend 'nope'"),
    ({"knn_backend": "torch", "knn": {"backend": "faiss"}}, "knn_backend 'torch' and knn.backend 'faiss' disagree"),
])
def test_bad_specs(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        SweepSpec.load(write_spec(tmp_path / "spec.yaml", **overrides))




@pytest.mark.parametrize("name", sorted(p.name for p in SWEEPS.glob("*.yaml")))
def test_shipped_specs_load(name, tmp_path):
    from mlpmem_lightning.study.pipeline import select

    raw = yaml.safe_load((SWEEPS / name).read_text())
    if raw.get("base"):  # a pretrained base the spec's script imports first: a tiny one stands in for it here
        from tests.pretrained_helpers import save_hf_dir, tiny_tokenizer

        base = save_hf_dir(tmp_path / Path(raw["base"]).name, "llama", tiny_tokenizer())
        spec = SweepSpec.load(SWEEPS / name, {"base": str(base)})
    else:
        spec = SweepSpec.load(SWEEPS / name)
    everything = ["decoder", "knn_lm", "mlp_memory", "mlp_memory_ce"]
    assert [a.name for a in select(spec)] == [a for a in everything if a in (spec.architectures or everything)]


def test_knn_backend_is_read_as_knn_backend(tmp_path):
    spec = SweepSpec.load(write_spec(tmp_path / "spec.yaml", knn_backend="torch"))
    assert spec.knn_settings.backend == "torch" and spec.knn_settings.k == TINY["knn"]["k"]


@pytest.mark.parametrize("overrides, message", [
    ({"architectures": ["decoder", "rag"]}, "unknown architecture 'rag': choose from decoder, knn_lm, mlp_memory, ml"),
    ({"architectures": ["decoder", "knn_lm"]}, "objective 'mlp_memory' is not among the study's architectures"),
    ({"architectures": []}, "architectures is empty"),
])
def test_bad_architectures_are_refused_before_anything_runs(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run_sweep(write_spec(tmp_path / "spec.yaml", **overrides))
    assert not (tmp_path / "study").exists()


def test_pruning_reports_by_global_step_and_prunes():
    """Several validations in one epoch are several steps for the pruner (see OptunaPruning)."""
    from types import SimpleNamespace

    from mlpmem_lightning.study.sweep import OptunaPruning

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=5.0))
    trial = study.ask()
    callback = OptunaPruning(trial)
    for step, loss in ((10, 4.0), (20, 4.5)):
        callback.on_validation_end(SimpleNamespace(callback_metrics={"val/loss": loss}, sanity_checking=False,
                                                   global_step=step), None)
    with pytest.raises(optuna.TrialPruned, match="step 30"):
        callback.on_validation_end(SimpleNamespace(callback_metrics={"val/loss": 6.0}, sanity_checking=False,
                                                   global_step=30), None)
    assert study.trials[0].intermediate_values == {10: 4.0, 20: 4.5, 30: 6.0}


def test_unopenable_storage(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", storage="sqlite:////nonexistent-dir/x/optuna.db")
    with pytest.raises(UserError, match="cannot open sweep storage"):
        run_sweep(spec)


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-m", "mlpmem_lightning.cli", "sweep", "--config", str(spec)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # trial 0 done, trial 1 under way: killed in a random one of its stages (directories keyed <size>-seed<s>-<hash8>)
    second = kill_rng("sweep").choice(["decoders/400k-seed0-*/checkpoints", "datastores/400k-seed0-*",
                                       "targets/400k-seed0-*", "memories/mem-400k-on-400k-seed0-*"])
    deadline = time.time() + 600
    while time.time() < deadline and not any(out.glob(second)):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = only(out, "decoders/200k-seed0-*") / "checkpoints" / "last.ckpt"
    assert first.is_file() and (out / "tiny" / "results.csv").is_file()
    finished = first.stat().st_mtime_ns

    results = pd.read_csv(run_sweep(spec))
    assert first.stat().st_mtime_ns == finished  # the finished decoder was not retrained
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'optuna.db'}")
    from mlpmem_lightning.study.recording import is_lambda_point

    grid = [t for t in study.trials if not is_lambda_point(t)]  # λ points are trials of their own (the dashboard)
    states = [t.state.name for t in grid]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1  # the killed trial is marked failed
    complete = [t.params["decoder_size"] for t in grid if t.state.name == "COMPLETE"]
    assert sorted(complete) == ["200k", "400k"]
    assert set(COLUMNS) <= set(results.columns) and len(results) == 2 * 3 * 2
    assert set(results["arch"]) == {"decoder", "knn_lm", "mlp_memory"}
    from mlpmem_lightning.data.token_store import TokenStore
    from mlpmem_lightning.knn.datastore import Datastore

    assert set(results["token_store_fingerprint"]) == {TokenStore(out / "tokens").fingerprint}  # provenance
    for size in ("200k", "400k"):
        rows = results[results.decoder_size == size]
        assert set(rows["decoder_fingerprint"]) == {Datastore(only(out, f"datastores/{size}-seed0-*")).manifest[
            "decoder_fingerprint"]}
    mem = results[(results.arch == "mlp_memory") & (results.split == "valid")]
    dec = results[(results.arch == "decoder") & (results.split == "valid")]
    assert (mem["flops_train_total"].values > dec["flops_train_total"].values).all()
    assert (mem["params_total"].values > dec["params_total"].values).all()


def test_editing_the_grid_and_resuming_runs_only_the_new_points(tmp_path, monkeypatch):
    import mlpmem_lightning.study.pipeline as pipeline

    ran = []

    def fake_pipeline(spec, decoder_size, memory_size, seed, callbacks=()):
        ran.append(decoder_size)
        row = {c: 0 for c in COLUMNS} | {"study": spec.study, "arch": "mlp_memory", "split": "valid", "loss": 1.0,
                                         "decoder_size": decoder_size, "memory_size": memory_size, "seed": seed}
        return [row], {}

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    monkeypatch.setattr(pipeline, "prepare_tokens", lambda spec: None)
    run_sweep(write_spec(tmp_path / "spec.yaml", decoder_sizes=["200k", "400k", "800k"]))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study' / 'optuna.db'}")
    study.enqueue_trial({"decoder_size": "400k", "seed": 0})  # left WAITING by a killed earlier version
    run_sweep(write_spec(tmp_path / "spec.yaml", decoder_sizes=["200k", "1.6m"]))  # one dropped, one added
    assert ran == ["200k", "400k", "800k", "1.6m"]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE"]
    assert sorted(pd.read_csv(tmp_path / "study" / "tiny" / "results.csv")["decoder_size"]) == [
        "1.6m", "200k", "400k", "800k"]


@pytest.mark.slow  # 2 demos: about 2 min quiet, 4 on a busy CI machine; `make test-slow`
def test_demo_pipeline_is_deterministic_on_cpu(tmp_path):
    """Two runs of the demo's pipeline (its kNN settings at toy budgets) with one seed: identical token
    stores, datastores, targets and metrics, byte for byte."""
    demo_knn = yaml.safe_load((SWEEPS / "demo.yaml").read_text())["knn"]
    outs = []
    for name in ("a", "b"):
        spec = write_spec(tmp_path / f"{name}.yaml", decoder_sizes=["200k"], out=str(tmp_path / name),
                          knn={**demo_knn, "k": 16, "keep": 8, "nlist": 16})
        outs.append(pd.read_csv(run_sweep(spec)))
        outs[-1]["trial"] = 0
    pd.testing.assert_frame_equal(outs[0], outs[1])
    a, b = tmp_path / "a", tmp_path / "b"
    files = [f"tokens/{s}.npy" for s in ("train", "valid", "test")] + ["tokens/tokenizer.json"]
    files += [f"datastores/200k-seed0-*/{n}" for n in ("keys.npy", "values.npy")]
    files += [f"targets/200k-seed0-*/{n}" for n in ("ids.npy", "probs.npy")]
    for f in files:  # the keys differ (each out's token store path is in them), the bytes do not
        assert only(a, f).read_bytes() == only(b, f).read_bytes(), f


def test_decoder_rows_are_decoder_lms_own_evaluation_and_equal_the_knn_lms_lambda_zero(tmp_path):
    """DecoderLM's validate/test of the decoder is the same network on the same windows as the kNN-LM's λ=0: the
    same perplexity on both splits, bit for bit on CPU; the rows keep the value they had when read off the kNN-LM.
    A study of these two runs no targets and no memory."""
    spec = write_spec(tmp_path / "spec.yaml", decoder_sizes=["200k"], architectures=["decoder", "knn_lm"],
                      objective="knn_lm")
    results = pd.read_csv(run_sweep(spec))
    out = tmp_path / "study"
    assert not (out / "targets").exists() and not (out / "memories").exists()

    def logged(run: str, command: str, key: str) -> float:
        return pd.read_csv(only(out, run) / command / "metrics.csv")[key].dropna().iloc[-1]

    for split, command, prefix in (("valid", "validate", "val"), ("test", "test", "test")):
        ppl = logged("decoders/200k-seed0-*", command, f"{prefix}/ppl")
        assert ppl == logged("knnlm/200k-seed0-*", command, f"{prefix}/decoder_ppl")
        row = results[(results["arch"] == "decoder") & (results["split"] == split)].iloc[0]
        assert row["loss"] == math.log(ppl) and row["lambda"] == 0.0
    knn = results[(results["arch"] == "knn_lm") & (results["split"] == "valid")].iloc[0]
    assert knn["ppl_lambda_0.00"] == logged("decoders/200k-seed0-*", "validate", "val/ppl")
    # the test pass's λ grid is kept too (the report's per-run table shows test ppl at λ = 0.25 and 1 beside λ*)
    knn_test = results[(results["arch"] == "knn_lm") & (results["split"] == "test")].iloc[0]
    assert knn_test["ppl_lambda_0.00"] == logged("decoders/200k-seed0-*", "test", "test/ppl")
    assert knn_test["ppl_lambda_1.00"] == logged("knnlm/200k-seed0-*", "test", "test/ppl_lambda_1.00")


def test_workers_sharing_a_study_keep_each_others_trials(tmp_path, monkeypatch):
    """A new worker fails only trials of dead workers: a live worker's RUNNING trial and the queue stay,
    and no point is queued twice; a dead worker's point is queued again."""
    import socket

    from mlpmem_lightning.study import pipeline
    from mlpmem_lightning.study.sweep import _enqueue_grid, _fail_dead_trials, open_storage

    spec = SweepSpec.load(write_spec(tmp_path / "spec.yaml", decoder_sizes=["200k", "400k", "800k"]))
    storage = open_storage(spec)
    assert storage.heartbeat_interval == spec.heartbeat  # other hosts' dead workers: Optuna's heartbeat
    study = optuna.create_study(study_name=spec.study, storage=storage)
    points = {p["decoder_size"]: p for p in spec.grid()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    for size, pid in (("200k", os.getpid()), ("400k", dead.pid)):  # a live worker's trial, a killed one's
        trial = study.ask()
        trial.set_user_attr("point", json.dumps(points[size]))
        trial.set_user_attr("worker", f"{host}:{pid}")
    study.enqueue_trial({}, user_attrs={"point": json.dumps(points["800k"])})  # queued by the live worker

    _fail_dead_trials(study)
    assert [t.state.name for t in study.trials] == ["RUNNING", "FAIL", "WAITING"]
    assert _enqueue_grid(study, spec) == 2  # 800k still waiting, 400k queued again, 200k left to its worker
    waiting = [json.loads(t.user_attrs["point"])["decoder_size"] for t in study.trials if t.state.name == "WAITING"]
    assert sorted(waiting) == ["400k", "800k"]

    ran = []
    monkeypatch.setattr(pipeline, "prepare_tokens", lambda spec: None)

    def fake_pipeline(spec, decoder_size, memory_size, seed, callbacks=()):
        ran.append(decoder_size)
        return [{c: 0 for c in COLUMNS} | {"arch": "mlp_memory", "split": "valid", "loss": 1.0,
                                           "decoder_size": decoder_size, "memory_size": memory_size, "seed": seed}], {}

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    run_sweep(tmp_path / "spec.yaml")  # a second worker joins: it runs the queue, not the live worker's point
    assert sorted(ran) == ["400k", "800k"]
    assert [t.state.name for t in study.trials].count("RUNNING") == 1
