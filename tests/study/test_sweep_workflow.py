"""The sweep as a researcher steers it: grid points and swept settings as Optuna parameters, λ points in the study,
command-line overrides, database drivers, one summary line per trial. The pipeline is faked (its losses a known
function of the point), so what is checked is what the study records, against that function."""

import math

import optuna
import pandas as pd
import pytest
import yaml

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import recording
from mlpmem_lightning.study.results import COLUMNS
from mlpmem_lightning.study.spec import SweepSpec
from mlpmem_lightning.study.sweep import open_storage, run_sweep

pytestmark = pytest.mark.unit

BASE = {"study": "wf", "decoder_sizes": ["200k", "400k"], "prepare": {"vocab_size": 1024, "max_documents": 400},
        "knn": {"index": "flat", "k": 16, "keep": 8}}
LAMBDAS = (0.0, 0.25, 0.5)


def loss_of(spec: SweepSpec, decoder_size: str, arch: str, lam: float) -> float:
    """The fake pipeline's valid loss: a parabola in λ whose floor moves with the size and the swept settings."""
    size = {"200k": 3.0, "400k": 2.5, "800k": 2.0}[decoder_size]
    shift = 0.0 if arch == "decoder" else {"knn_lm": 0.1, "mlp_memory": 0.2}[arch]
    return size + (spec.decoder_lr or 0) * 10 + spec.knn["k"] / 1000 + (lam - 0.25) ** 2 - shift


@pytest.fixture
def fake(monkeypatch):
    import mlpmem_lightning.study.pipeline as pipeline

    ran = []

    def fake_pipeline(spec, decoder_size, memory_size, seed, callbacks=(), decoder_budget=None):
        ran.append((decoder_size, spec.decoder_lr, spec.knn["k"]) + ((decoder_budget,) if decoder_budget else ()))
        rows = []
        for arch in ("decoder", "knn_lm", "mlp_memory"):
            grid = {} if arch == "decoder" else {
                f"ppl_lambda_{lam:.2f}": math.exp(loss_of(spec, decoder_size, arch, lam)) for lam in LAMBDAS}
            lam = 0.0 if arch == "decoder" else 0.25
            for split in ("valid", "test"):
                loss = loss_of(spec, decoder_size, arch, lam)
                rows.append({c: 0 for c in COLUMNS} | {
                    "study": spec.study, "arch": arch, "split": split, "loss": loss, "ppl": math.exp(loss),
                    "lambda": lam, "decoder_size": decoder_size, "memory_size": memory_size, "seed": seed,
                    **(grid if split == "valid" else {})})
        return rows, {"time_decoder_fit_s": 1.5, "time_memory_fit_s": 2.0}

    monkeypatch.setattr(pipeline, "run_pipeline", fake_pipeline)
    monkeypatch.setattr(pipeline, "prepare_tokens", lambda spec: None)
    return ran


def write(tmp_path, **keys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**BASE, "out": str(tmp_path / "out"), **keys}))
    return path


def load(tmp_path, name="wf"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")


def test_every_decoder_budget_of_the_grid_reaches_the_pipeline(tmp_path, fake):
    """A point's budget picks its decoder (and, below the largest, that only the baseline runs): dropping it on the way
    from the grid to the pipeline trains every point at the default token count (found on the H200)."""
    run_sweep(write(tmp_path, decoder_budgets=[0.5, 1.0]))
    assert sorted(fake) == sorted((d, None, 16, b) for d in ("200k", "400k") for b in (0.5, 1.0))


def test_grid_points_and_swept_settings_are_parameters_and_lambda_points_are_recorded(tmp_path, fake, capsys):
    run_sweep(write(tmp_path, decoder_lr=[1e-3, 3e-3]))
    assert sorted(fake) == sorted((d, lr, 16) for d in ("200k", "400k") for lr in (1e-3, 3e-3))
    study = load(tmp_path)
    real = [t for t in study.trials if not recording.is_lambda_point(t)]
    assert len(real) == 4
    for t in real:  # the point is the trial's parameters, each with a distribution that contains it
        assert set(t.params) == {"decoder_size", "memory_size", "seed", "decoder_lr"}
        assert all(t.distributions[k]._contains(t.distributions[k].to_internal_repr(v)) for k, v in t.params.items())
        spec = SweepSpec.load(write(tmp_path, decoder_lr=t.params["decoder_lr"]))
        assert t.value == pytest.approx(loss_of(spec, t.params["decoder_size"], "mlp_memory", 0.25))
    points = [t for t in study.trials if recording.is_lambda_point(t)]
    assert len(points) == 4 * 2 * len(LAMBDAS)  # trials x mixing architectures x λ
    for p in points:
        parent = study.trials[p.user_attrs["parent"]]
        assert {k: p.params[k] for k in parent.params} == parent.params
        spec = SweepSpec.load(write(tmp_path, decoder_lr=parent.params["decoder_lr"]))
        want = loss_of(spec, parent.params["decoder_size"], p.params["arch"], p.params["lambda"])
        assert p.value == pytest.approx(want, rel=1e-9)
    out = capsys.readouterr().out
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 4
    assert "decoder_fit 2s" in out and "(λ 0.25)" in out  # each mixture with its own λ (and T where it has one)
    assert "results in" in out and "test loss" in out and "Best is trial" not in out
    results = pd.read_csv(tmp_path / "out" / "wf" / "results.csv")
    assert len(results) == 4 * 3 * 2 and sorted(results["decoder_lr"].unique()) == [1e-3, 3e-3]
    trials = pd.read_csv(tmp_path / "out" / "wf" / "trials.csv")
    assert len(trials) == 4  # λ points are not trials of the table


def test_resume_skips_lambda_points_and_editing_the_grid_keeps_parameters_valid(tmp_path, fake):
    run_sweep(write(tmp_path))
    assert len(fake) == 2
    run_sweep(write(tmp_path))  # nothing left: λ points are not mistaken for points to run or failures
    assert len(fake) == 2
    run_sweep(write(tmp_path, decoder_sizes=["200k", "400k", "800k"], seeds=[0, 3]))
    assert len(fake) == 6
    real = [t for t in load(tmp_path).trials if not recording.is_lambda_point(t)]
    assert all(t.state.name == "COMPLETE" for t in real) and {t.params["seed"] for t in real} == {0, 3}


def test_a_second_study_in_the_same_out_keeps_its_own_table(tmp_path, fake):
    run_sweep(write(tmp_path))
    run_sweep(write(tmp_path, study="other", decoder_sizes=["200k"]))
    assert len(pd.read_csv(tmp_path / "out" / "wf" / "results.csv")) == 12
    assert len(pd.read_csv(tmp_path / "out" / "other" / "results.csv")) == 6


def test_sampler_ranges_are_drawn_and_lambda_points_go_to_a_companion_study(tmp_path, fake):
    run_sweep(write(tmp_path, sampler={"name": "random", "n_trials": 3,
                                       "params": {"decoder_lr": {"low": 1e-4, "high": 1e-2, "log": True}}}))
    study = load(tmp_path)
    assert len(study.trials) == 3 and not any(recording.is_lambda_point(t) for t in study.trials)
    assert all(1e-4 <= t.params["decoder_lr"] <= 1e-2 for t in study.trials)
    assert [lr for _, lr, _ in fake] == [t.params["decoder_lr"] for t in study.trials]
    assert len(load(tmp_path, "wf.lambda").trials) == 3 * 2 * len(LAMBDAS)


def test_cli_overrides_set_spec_keys_and_are_validated(tmp_path, fake):
    from mlpmem_lightning.cli import main

    main(["sweep", "--config", str(write(tmp_path)), "--out", str(tmp_path / "elsewhere"), "--set", "knn.k=[8, 32]",
          "--set", "decoder_sizes=[200k]"])
    assert sorted(fake) == [("200k", None, 8), ("200k", None, 32)]
    assert (tmp_path / "elsewhere" / "wf" / "results.csv").is_file()
    spec = SweepSpec.load(write(tmp_path), {"sampler.name": "tpe", "sampler.n_trials": 5})
    assert (spec.sampler, spec.n_trials) == ("tpe", 5)


@pytest.mark.parametrize("keys, message", [
    ({"alpha": [0.5, 2.0]}, "alpha and lambda must lie in"),
    ({"decoder_lr": []}, "a swept setting is a non-empty list of numbers"),
    ({"knn": {"k": [16, "x"]}}, "a swept setting is a non-empty list of numbers"),
    ({"sampler": {"name": "tpe", "params": {"nope": {"low": 1, "high": 2}}}}, "sampler param 'nope'"),
    ({"sampler": {"name": "tpe", "params": {"alpha": {"low": 0.9, "high": 0.1}}}}, "low <= high"),
    ({"sampler": {"name": "tpe", "params": {"alpha": {"low": 0, "high": 1}}}, "alpha": [0.1]}, "both a list"),
    ({"ranges": {"alpha": {"low": 0.1, "high": 0.9}}}, "need a sampler"),
    ({"sampler": {"name": "tpe", "bogus": 1}}, "sampler section"),
])
def test_bad_sweep_settings(tmp_path, keys, message):
    with pytest.raises(UserError, match=message):
        SweepSpec.load(write(tmp_path, **keys))


@pytest.mark.parametrize("text, message", [("knn.k", "write KEY=VALUE"), ("study.x=3", "not a section")])
def test_bad_overrides(tmp_path, text, message):
    from mlpmem_lightning.cli.study import override

    with pytest.raises(UserError, match=message):
        SweepSpec.load(write(tmp_path), dict([override(text)]))


def test_a_missing_database_driver_names_the_extra(tmp_path):
    pytest.importorskip("sqlalchemy")
    spec = SweepSpec.load(write(tmp_path, storage="postgresql+psycopg2://u:secret@localhost/db"))
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"needs the database driver psycopg2.*mlpmem-lightning\[postgres\]") as e:
            open_storage(spec)
        assert "secret" not in str(e.value)
    else:
        pytest.skip("psycopg2 is installed")


def dashboard_get(app, path: str) -> dict:
    """GET a JSON endpoint of optuna-dashboard's WSGI app (what its web page reads), without a server."""
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_sees_the_grid_as_parameters_with_importances(tmp_path, fake):
    """The dashboard's own API on the study: its search space holds the grid's dimensions and λ, and its
    parameter-importance plot has them to rank."""
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    run_sweep(write(tmp_path, decoder_sizes=["200k", "400k", "800k"], decoder_lr=[1e-3, 2e-3]))
    app = optuna_dashboard.wsgi(f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    studies = dashboard_get(app, "/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in studies if s["study_name"] == "wf")
    detail = dashboard_get(app, f"/api/studies/{study_id}")
    union = {p["name"]: p["distribution"]["type"] for p in detail["union_search_space"]}
    assert union == {"decoder_size": "CategoricalDistribution", "memory_size": "CategoricalDistribution",
                     "seed": "IntDistribution", "decoder_lr": "FloatDistribution",
                     "arch": "CategoricalDistribution", "lambda": "FloatDistribution"}
    assert len(detail["trials"]) == 6 + 6 * 2 * len(LAMBDAS)
    importances = dashboard_get(app, f"/api/studies/{study_id}/param_importances")["param_importances"][0]
    ranked = [i["name"] for i in sorted(importances, key=lambda i: -i["importance"])]
    assert set(ranked) >= {"decoder_size", "decoder_lr", "lambda"}


def test_trial_stages_are_quiet_and_show_a_fit_progress_bar_only_on_a_terminal(monkeypatch):
    """The structured configs a trial runs: fits show a bar on a terminal, evaluations print no result tables."""
    import sys
    from types import SimpleNamespace

    from mlpmem_lightning.study.stages import Stages

    spec = SweepSpec(study="s", decoder_sizes=["200k"])
    stages = SimpleNamespace(spec=spec, trainer_yaml={"trainer": {"accelerator": "cpu"}}, token_store="tok", seed=0)
    for tty in (True, False):
        monkeypatch.setattr(sys.stdout, "isatty", lambda: tty, raising=False)
        fit = Stages.config(stages, "fit", {"class_path": "DecoderLM"}, root=".")["fit"]
        assert fit["trainer"]["enable_progress_bar"] is tty and "verbose" not in fit
    for sub in ("validate", "test"):
        cfg = Stages.config(stages, sub, {"class_path": "DecoderLM"}, root=".")[sub]
        assert cfg["verbose"] is False and cfg["trainer"]["enable_progress_bar"] is False


def test_lightning_adverts_are_dropped_and_other_messages_kept():
    import logging

    from lightning.pytorch.utilities import rank_zero

    recording.quiet_lightning()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = rank_zero.rank_zero_module.log
    handler = Keep()
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        rank_zero.rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](https://pypi.org)")
        rank_zero.rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    assert seen == ["GPU available: False, used: False"]


def test_every_temperature_of_the_knn_lms_grid_is_a_point_of_the_study():
    """The kNN-LM's (λ, T) grid in the study: its λ curve at the T it chose, and every other T at that T's own best
    λ, each with its valid loss (the dashboard plots loss against λ and T per size)."""
    from optuna.distributions import CategoricalDistribution

    parent = optuna.trial.create_trial(params={"decoder_size": "200k"},
                                       distributions={"decoder_size": CategoricalDistribution(["200k"])}, value=1.0)
    row = {"arch": "knn_lm", "split": "valid", "temperature": 2.0, "ppl_lambda_0.00": 50.0, "ppl_lambda_0.50": 40.0,
           "ppl_T_1": 45.0, "lambda_T_1": 0.25, "ppl_T_2": 40.0, "lambda_T_2": 0.5, "ppl_T_4": 48.0,
           "lambda_T_4": 0.10000000149011612}
    points = {(t.params["lambda"], t.params["T"]): t.value for t in recording.lambda_trials(parent, [row])}
    assert points == pytest.approx({(0.0, 2.0): math.log(50), (0.5, 2.0): math.log(40), (0.25, 1.0): math.log(45),
                                    (0.1, 4.0): math.log(48)})
