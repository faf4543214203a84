"""What a sweep records in its Optuna study and prints: parameters, λ points, one line per trial, a closing table.

* Grid points are Optuna parameters: a grid trial's sampler (:class:`PointSampler`) answers each
  ``trial.suggest_*`` with the value of the point the trial was queued with, so the point is recorded with a
  distribution (:func:`mlpmem_lightning.study.axes.distribution`) and optuna-dashboard can plot it.
* Every evaluated λ (and T, when the λ grid has one) of every architecture is added to the study as a finished
  trial of its own (``user_attrs: {kind: lambda_point, parent: N}``; its value the valid loss there), so the
  dashboard shows loss against λ per size. The λ grid itself is still evaluated in one pass. Resume and
  the tables skip these trials (:func:`is_lambda_point`). A random/TPE study records them in a companion study
  ``<study>.lambda`` instead: as finished trials of the study itself they would steer its sampler.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

import pandas as pd

from mlpmem_lightning.study import axes
from mlpmem_lightning.study.spec import SweepSpec

KIND = "lambda_point"
STAGE_ORDER = ["decoder_fit", "datastore", "targets", "memory_fit", "decoder_eval", "knn_lm_eval", "memory_eval"]
GRID_KEY = re.compile(r"ppl_lambda_([0-9.]+)(?:_T_?([0-9.]+))?$")


class NoAdverts(logging.Filter):
    """Drops Lightning's adverts ("💡 Tip: … try installing litlogger …"), printed at every Trainer's start."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("💡") or "litlogger" in text or "litmodels" in text)


def quiet_lightning() -> None:
    """Install :class:`NoAdverts` on Lightning's loggers (once): a trial runs several Trainers."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoAdverts) for f in logger.filters):
            logger.addFilter(NoAdverts())


def is_lambda_point(trial) -> bool:
    return trial.user_attrs.get("kind") == KIND


def point_sampler():
    """A sampler that answers a queued trial's ``suggest_*`` with its point (``user_attrs["point"]``)."""
    import optuna

    class PointSampler(optuna.samplers.RandomSampler):
        """Queued grid points as parameters; a trial without a point (none should run) gets a random draw."""

        def sample_independent(self, study, trial, param_name, param_distribution):
            point = json.loads(trial.user_attrs.get("point", "{}"))
            if param_name in point:
                return point[param_name]
            return super().sample_independent(study, trial, param_name, param_distribution)

    return PointSampler(seed=0)


def record_params(trial, spec: SweepSpec, point: dict[str, Any]) -> None:
    """Record the point's keys as the trial's parameters (the point sampler returns the point's values)."""
    grid = spec.grid()
    for name in point:
        values = [p[name] for p in grid if name in p] + [point[name]]
        axes.suggest(trial, name, axes.distribution(name, values))


def lambda_trials(trial, rows: list[dict]) -> list:
    """The λ points of a finished trial: one per architecture and evaluated (λ, T), valued at its valid loss."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from mlpmem_lightning.study import architectures

    archs = CategoricalDistribution(architectures.names())
    out = []
    for row in rows:
        if row["split"] != "valid" or row["arch"] not in archs.choices:
            continue
        for lam, t, ppl in _grid_points(row):
            if ppl is None or not math.isfinite(float(ppl)):
                continue
            params = {**trial.params, "arch": row["arch"], "lambda": lam}
            dists = {**trial.distributions, "arch": archs, "lambda": FloatDistribution(0.0, 1.0)}
            if t is not None:
                params["T"], dists["T"] = t, FloatDistribution(1e-3, 1e6, log=True)
            out.append(optuna.trial.create_trial(
                params=params, distributions=dists, value=math.log(float(ppl)),
                user_attrs={"kind": KIND, "parent": trial.number, "arch": row["arch"]}))
    return out


def _grid_points(row: dict) -> list[tuple[float, float | None, float]]:
    """(λ, T, valid ppl) of a row: its λ curve (at the T it chose, when it chose one from a grid) and each other T
    of its grid at that T's best λ (``ppl_T_<T>``, ``lambda_T_<T>``: the kNN-LM's temperature grid)."""
    chosen = row.get("temperature") if any(k.startswith("ppl_T_") for k in row) else None
    points = []
    for key, ppl in row.items():
        if match := GRID_KEY.match(key):
            t = float(match[2]) if match[2] is not None else chosen
            points.append((float(match[1]), None if t is None else float(t), ppl))
        elif key.startswith("ppl_T_") and f"lambda_T_{key[6:]}" in row and float(key[6:]) != chosen:
            points.append((round(float(row[f"lambda_T_{key[6:]}"]), 6), float(key[6:]), ppl))  # logged in fp32
    return points


def record_lambda_points(study, trial, spec: SweepSpec, storage) -> None:
    """Add a finished trial's λ points to the study (grid) or to ``<study>.lambda`` (random/TPE)."""
    import optuna

    if trial.state != optuna.trial.TrialState.COMPLETE or is_lambda_point(trial):
        return
    points = lambda_trials(trial, json.loads(trial.user_attrs.get("rows", "[]")))
    if spec.sampler != "grid":
        study = optuna.create_study(study_name=f"{spec.study}.lambda", storage=storage, load_if_exists=True)
    study.add_trials(points)


def summary_line(trial, spec: SweepSpec) -> str:
    """One line for a finished trial: its point, loss per architecture (valid, at its λ), T, seconds per stage."""
    attrs = trial.user_attrs
    point = json.loads(attrs["point"]) if "point" in attrs else {k: attrs.get(k) for k in axes.POINT}
    rows = [r for r in json.loads(attrs.get("rows", "[]")) if r["split"] == "valid"]
    where = f"{point.get('decoder_size')}/{point.get('memory_size')} seed {point.get('seed')}"
    extra = " ".join(f"{k}={v:g}" for k, v in point.items() if k in axes.AXES)
    losses = ", ".join(f"{r['arch']} {r['loss']:.4f}{_mix(r)}" for r in rows)
    stages = sorted((k[5:-2] for k in attrs if k.startswith("time_") and k.endswith("_s")),
                    key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s))
    times = " ".join(f"{s} {attrs[f'time_{s}_s']:.0f}s" for s in stages)
    where += f" budget {point['decoder_budget']:g}" if point.get("decoder_budget") is not None else ""
    where += f" {extra}" if extra else ""
    return f"trial {trial.number} {where}: valid loss {losses}; {times}"


def _mix(row: dict) -> str:
    """An architecture's λ and T (the kNN-LM's, chosen on valid; the memory's targets'), as its row records them."""
    if row["arch"] == "decoder":
        return ""
    t = row.get("temperature")
    return f" (λ {row['lambda']:g}" + (f", T {t:.3g})" if t is not None and t == t else ")")


def short_table(results: pd.DataFrame, split: str = "test") -> str:
    """Loss per architecture (columns) and point (rows) on ``split``: what the sweep prints when it ends."""
    keys = ["decoder_size", "seed"] + [c for c in results.columns if c in axes.AXES]
    df = results[results["split"] == split].copy()
    if df.empty:
        return "(no rows)"
    df["memory_size"] = df["memory_size"].fillna("").astype(str)
    # one column per architecture; per (architecture, memory size) where a decoder has several memory sizes
    several = df.groupby(keys + ["arch"])["memory_size"].transform("nunique") > 1
    df["column"] = df["arch"].where(~several, df["arch"] + " " + df["memory_size"])
    table = df.pivot_table(index=keys, columns="column", values="loss", aggfunc="first").rename_axis(columns=None)
    return f"{split} loss:\n{table.round(4).to_string()}"
