"""The training recipe of issue #15: budget rule, warmup, convergence flag, per-rung LR search and its reuse."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.lightning.convergence import ConvergenceMonitor, last_improvement, summary
from mlpmem_lightning.lightning.optim import warmup_steps
from mlpmem_lightning.models.decoder import build_decoder
from mlpmem_lightning.models.ladder import LADDER, get_size
from mlpmem_lightning.study import lr_runner, lr_search
from mlpmem_lightning.study.budget import budget_tokens, epochs, rule_tokens


def _n_total(name: str, vocab: int) -> int:
    with torch.device("meta"):
        net = build_decoder(get_size(name), vocab, "llama")
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("size", [LADDER[0].name, LADDER[-1].name])
@pytest.mark.parametrize("train", [1_000_000, 50_000_000])
def test_budget_rule_is_twenty_tokens_per_parameter_capped_at_four_epochs(size, train):
    vocab = 16384
    expected = min(20 * _n_total(size, vocab), 4 * train)  # counted off the built model
    assert rule_tokens(size, vocab, train) == expected
    assert budget_tokens(size, vocab, train, 0.5) == round(0.5 * expected)
    assert epochs(budget_tokens(size, vocab, train), train) == pytest.approx(expected / train)
    assert epochs(budget_tokens(size, vocab, train), train) <= 4.0


def test_budget_multiplier_must_be_positive():
    with pytest.raises(UserError, match="multiplier"):
        budget_tokens(LADDER[0].name, 4096, 10_000, 0.0)


@pytest.mark.parametrize("total, expected", [
    (1, 1), (3, 1), (50, 25), (199, 99), (200, 100), (1000, 100), (2000, 100), (2001, 100), (4000, 200),
    (10_000, 500),
])
def test_warmup_is_five_percent_or_100_steps_whichever_larger_capped_at_half_the_run(total, expected):
    assert warmup_steps(total) == expected


def test_last10_improvement_against_a_hand_computed_reference():
    steps, losses = [25, 50, 75, 100], [5.0, 4.0, 3.5, 3.3]
    # at step 90: 3.5 + (3.3 - 3.5) * (90 - 75) / (100 - 75) = 3.38, so the last 10% gained 0.08 nats
    assert last_improvement(steps, losses, 100) == pytest.approx(0.08)
    s = summary(steps, losses, 100)
    assert s["last10_improvement"] == pytest.approx(0.08) and s["converged"] is False
    flat = summary([90, 100], [3.305, 3.3], 100)  # 0.005 nats <= 0.02: converged
    assert flat["converged"] is True and flat["last10_improvement"] == pytest.approx(0.005)


def test_the_window_ends_at_the_last_validation_when_it_falls_just_short_of_the_run():
    # validations every 37 steps of a 150-step run (val_check_interval 0.25): the last is at 148, the window
    # starts 15 steps earlier, at 133: 6.068 + (5.919 - 6.068) * (133 - 111) / (148 - 111)
    start = 6.068 + (5.919 - 6.068) * 22 / 37
    assert last_improvement([37, 74, 111, 148], [7.226, 6.522, 6.068, 5.919], 150) == pytest.approx(start - 5.919)


def test_convergence_unknown_without_a_validation_before_the_last_tenth_or_near_the_end():
    s = summary([95, 100], [3.4, 3.3], 100)
    assert s["converged"] is None and s["last10_improvement"] is None
    assert math.isnan(last_improvement([], [], 100))
    assert math.isnan(last_improvement([50, 80, 90], [4.0, 3.5, 3.4], 100))  # the end (90) was not measured


class _Trainer:
    """What the monitor reads of a Trainer."""

    def __init__(self, root, max_steps):
        self.default_root_dir, self.max_steps, self.is_global_zero = str(root), max_steps, True
        self.sanity_checking, self.global_step, self.callback_metrics = False, 0, {}


def test_the_monitor_records_validations_survives_a_resume_and_writes_the_summary(tmp_path):
    trainer, monitor = _Trainer(tmp_path, 200), ConvergenceMonitor()
    trainer.sanity_checking, trainer.callback_metrics = True, {"val/loss": torch.tensor(9.0)}
    monitor.on_validation_end(trainer, None)  # the sanity check is not a point of the curve
    trainer.sanity_checking = False
    for step, loss in [(50, 5.0), (100, 4.0), (150, 3.6)]:
        trainer.global_step, trainer.callback_metrics = step, {"val/loss": torch.tensor(loss)}
        monitor.on_validation_end(trainer, None)
    resumed = ConvergenceMonitor()
    resumed.load_state_dict(monitor.state_dict())
    trainer.global_step, trainer.callback_metrics = 200, {"val/loss": torch.tensor(3.5)}
    resumed.on_validation_end(trainer, None)
    resumed.on_fit_end(trainer, None)
    conv = json.loads((tmp_path / "convergence.json").read_text())
    reference = float(np.interp(180, [50, 100, 150, 200], [5, 4, 3.6, 3.5]) - 3.5)  # 3.54 - 3.5
    assert conv["val_steps"] == [50, 100, 150, 200]
    assert conv["last10_improvement"] == pytest.approx(reference) and conv["converged"] is False


def test_a_decoder_fit_writes_its_convergence_summary(small_decoder):
    conv = json.loads((small_decoder / "convergence.json").read_text())
    metrics = pd.read_csv(small_decoder / "metrics.csv")
    logged = sorted(metrics["val/loss"].dropna().round(5).unique())
    assert sorted(np.round(conv["val_losses"], 5)) == logged  # every validation of the run, none invented
    steps, losses, total = conv["val_steps"], conv["val_losses"], conv["total_steps"]
    assert 0.95 * total <= steps[-1] <= total
    reference = np.interp(steps[-1] - 0.1 * total, steps, losses) - losses[-1]
    assert conv["last10_improvement"] == pytest.approx(reference, abs=1e-9)
    assert conv["converged"] == bool(reference <= conv["threshold"])


# -- the LR search: the selection and edge extension with a stub objective --------------------------------------
def _stub(optimum: float, calls: list):
    def objective(lr: float) -> float:
        calls.append(lr)
        return (math.log10(lr) - math.log10(optimum)) ** 2
    return objective


def test_best_lr_at_the_top_edge_extends_the_grid_one_step_past_it():
    calls = []
    losses = lr_search.search(_stub(2e-2, calls), [1e-4, 1e-3, 1e-2], max_extensions=3)
    assert calls == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])  # one step (x10) past the edge, then inside
    best, at_edge = lr_search.choose(losses)
    assert best == pytest.approx(1e-2) and not at_edge


def test_best_lr_at_the_bottom_edge_extends_downwards_and_is_bounded():
    calls = []
    losses = lr_search.search(_stub(1e-9, calls), [1e-4, 1e-3, 1e-2], max_extensions=2)
    assert calls[3:] == pytest.approx([1e-5, 1e-6])  # two extensions, no more
    assert lr_search.choose(losses) == (pytest.approx(1e-6), True)  # still at the edge: reported as such


def test_finished_trials_are_not_run_again():
    calls = []
    done = {1e-4: 4.0, 1e-3: 1.0}
    losses = lr_search.search(_stub(1e-3, calls), [1e-4, 1e-3, 1e-2], done=done)
    assert calls == [1e-2] and losses[1e-4] == 4.0


def test_a_diverged_lr_counts_as_worst():
    assert lr_search.choose({1e-3: 2.0, 1e-2: 1.9, 1e-1: math.inf}) == (1e-2, False)


def _lr_csv(path, at_edge: bool):
    pd.DataFrame([{"study": "s", "decoder_size": "n0.1m", "budget": 1.0, "tokens": 1000, "epochs": 1.0,
                   "lr": 0.0031622776601683794, "val_loss": 5.0, "chosen": True, "at_edge": at_edge,
                   "grid": "0.001 0.00316 0.01", "token_store_fingerprint": "abc"}]).to_csv(path, index=False)
    return path


def test_a_recorded_lr_is_reused_exactly_at_every_budget_of_its_rung(tmp_path):
    path = _lr_csv(tmp_path / "lr.csv", at_edge=False)
    assert lr_search.recorded_lr(path, "n0.1m", 1000, "abc") == 0.0031622776601683794
    assert lr_search.recorded_lr(path, "n0.1m", 500, "abc") == 0.0031622776601683794


@pytest.mark.parametrize("size, tokens, fingerprint, message", [
    ("n0.1m", 1000, "abc", "at the edge of its grid"),
    ("n0.2m", 1000, "abc", "no learning rate recorded for n0.2m"),
    ("n0.1m", 1000, "zzz", "no learning rate recorded"),
])
def test_reusing_an_lr_at_an_edge_or_not_searched_is_refused(tmp_path, size, tokens, fingerprint, message):
    path = _lr_csv(tmp_path / "lr.csv", at_edge=True) if "edge" in message else _lr_csv(tmp_path / "lr.csv", False)
    with pytest.raises(UserError, match=message):
        lr_search.recorded_lr(path, size, tokens, fingerprint)


def test_each_rung_runs_at_each_budget_and_extra_seeds_at_the_largest(tmp_path):
    import yaml

    from mlpmem_lightning.study.spec import SweepSpec

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"study": "b", "decoder_sizes": ["n0.1m", "n0.2m"], "decoder_budgets": [0.5, 1.0],
                                    "extra_points": [{"decoder_size": "n0.2m", "seed": 1}],
                                    "decoder_lr": {"from": str(tmp_path / "lr.csv")}}))
    points = {(p["decoder_size"], p["decoder_budget"], p["seed"]) for p in SweepSpec.load(path).grid()}
    assert points == {("n0.1m", 0.5, 0), ("n0.1m", 1.0, 0), ("n0.2m", 0.5, 0), ("n0.2m", 1.0, 0), ("n0.2m", 1.0, 1)}


@pytest.mark.slow
def test_lr_search_on_a_tiny_cpu_problem_records_resumes_and_is_reused(small_store, tmp_path, monkeypatch):
    import yaml

    from mlpmem_lightning.study.stages import Stages

    spec = tmp_path / "lr.yaml"
    spec.write_text(yaml.safe_dump({
        "study": "lr", "decoder_sizes": ["n0.1m"], "out": str(tmp_path / "out"), "token_store": str(small_store),
        "prepare": {"vocab_size": 4096, "max_documents": 2000}, "seq_len": 32, "batch_size": 4, "eval_batch_size": 64,
        "lr_search": {"grid": [1e-4, 1e-3, 1e-2], "max_extensions": 1, "budget": 0.0005}}))
    path = lr_runner.run_lr_search(spec)
    df = pd.read_csv(path, float_precision="round_trip")
    losses = dict(zip(df["lr"], df["val_loss"]))
    first = min([1e-4, 1e-3, 1e-2], key=lambda lr: losses[lr])  # the grid's best, by hand
    expected = {1e-4: [1e-5], 1e-3: [], 1e-2: [1e-1]}[first]  # one step past the edge it sits on, if any
    assert sorted(losses) == pytest.approx(sorted([1e-4, 1e-3, 1e-2, *expected]))
    best = min(losses, key=losses.get)
    assert df.loc[df["chosen"], "lr"].tolist() == [best]
    assert bool(df.loc[df["chosen"], "at_edge"].iloc[0]) == (best in (min(losses), max(losses)))
    monkeypatch.setattr(Stages, "run_shared", lambda *a: pytest.fail("a finished trial ran again"))
    assert pd.read_csv(lr_runner.run_lr_search(spec), float_precision="round_trip").equals(df)


@pytest.mark.slow
def test_lr_search_workers_fit_the_same_points_as_one_process(small_store, tmp_path, monkeypatch):
    """``--workers 2``: the grid's fits run as separate processes, then each rung's extensions; the record holds the
    very LRs and losses a single process finds (the fits are deterministic on CPU at one thread count: a worker
    gets its share of the cores, and a diverging fit at LR 1e-2 amplifies another summation order to 1e-4)."""
    import yaml

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers keep a user's setting
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial fits run in this process

    def spec(name: str):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "study": "lr", "decoder_sizes": ["n0.1m", "n0.2m"], "out": str(tmp_path / name),
            "token_store": str(small_store), "prepare": {"vocab_size": 4096, "max_documents": 2000}, "seq_len": 32,
            "batch_size": 4, "eval_batch_size": 64,
            "lr_search": {"grid": [1e-4, 1e-3, 1e-2], "max_extensions": 1, "budget": 0.0002}}))
        return path

    keys = ["decoder_size", "lr", "val_loss", "chosen"]
    try:
        serial = pd.read_csv(lr_runner.run_lr_search(spec("serial")), float_precision="round_trip")[keys]
    finally:
        torch.set_num_threads(threads)
    parallel = pd.read_csv(lr_runner.run_lr_search(spec("parallel"), workers=2), float_precision="round_trip")[keys]
    sort = ["decoder_size", "lr"]
    pd.testing.assert_frame_equal(parallel.sort_values(sort).reset_index(drop=True),
                                  serial.sort_values(sort).reset_index(drop=True), rtol=1e-5)
    assert len(list((tmp_path / "parallel" / "lr" / "workers").glob("lr-*.log"))) >= 6  # 6 grid fits, 2 rungs


def test_smaller_budgets_run_the_baseline_alone():
    """The frontier needs decoder-only runs at every budget; the kNN-LM, the memory and the control are built on the
    largest budget's decoder only (their datastore and targets are the study's most expensive stages)."""
    import dataclasses

    from mlpmem_lightning.study import architectures
    from mlpmem_lightning.study.pipeline import runs_at_budget
    from mlpmem_lightning.study.spec import SweepSpec
    from tests.helpers import ROOT

    spec = dataclasses.replace(SweepSpec.load(ROOT / "sweeps" / "demo.yaml"), decoder_budgets=[0.5, 1.0])
    every = [a.name for a in architectures.registered()]
    assert [a.name for a in architectures.registered() if runs_at_budget(a, spec, 1.0)] == every
    assert [a.name for a in architectures.registered() if runs_at_budget(a, spec, 0.5)] == ["decoder"]
    assert all(runs_at_budget(a, dataclasses.replace(spec, decoder_budgets=None), None)
               for a in architectures.registered())
