"""`mlpmem sweep --config sweeps/NAME.yaml`: an Optuna study over decoder and memory sizes.

Each trial runs the whole pipeline for its (decoder size, memory size, seed): fit the
decoder -> datastore -> targets -> fit the memory -> evaluate decoder, kNN-LM and
decoder + memory, with λ picked on valid over the grid (or fixed by the spec) and test
reported at that λ. Artifacts live under ``out/`` keyed by what they depend on, so trials
that share a decoder reuse its checkpoint, datastore and targets, and an interrupted trial
resumes its stages. The study lives in Optuna storage (SQLite by default, a journal file
for shared file systems, or any RDB URL); a restarted sweep re-runs only unfinished grid
points. Every trial stores its rows as a user attribute; ``results.csv`` (the results table)
and ``trials.csv`` (one row per trial: sizes, FLOPs and wall seconds per stage) are rebuilt
from the storage after every trial.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from lightning.pytorch.callbacks import Callback

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.results import write_results

log = logging.getLogger(__name__)
_ACTIVE_TRIAL = None  # the Optuna trial whose training runs now (read by OptunaPruning)


@dataclass
class SweepSpec:
    """A sweep specification (the YAML's keys; unknown keys are refused)."""

    study: str
    decoder_sizes: list[str]
    memory_sizes: list[str] | str = "matched"  # "matched": the memory rung matched to each decoder
    seeds: list[int] = field(default_factory=lambda: [0])
    extra_points: list[dict[str, Any]] = field(default_factory=list)  # more (decoder_size, memory_size, seed)
    out: str | None = None  # default runs/sweeps/<study>
    storage: str | None = None  # default sqlite:///<out>/optuna.db; "journal:PATH"; any RDB URL
    sampler: str = "grid"  # grid | random | tpe
    n_trials: int | None = None  # for random/tpe (grid: the whole grid)
    corpus: str = "wiki-summaries"
    token_store: str | None = None  # default <out>/tokens
    prepare: dict[str, Any] = field(default_factory=dict)  # PrepareSettings overrides
    trainer: str = "cpu"  # experiments/trainer/<name>.yaml
    seq_len: int = 128
    batch_size: int = 16
    decoder_tokens: int = 1_000_000
    memory_tokens: int = 1_000_000
    memory_mode: str = "online"
    alpha: float = 0.5
    knn: dict[str, Any] = field(default_factory=dict)  # TargetSettings overrides (index, k, temperature, keep, ...)
    knn_eval_index: str | None = None  # index for kNN-LM evaluation (default: knn.index)
    lambda_: float | None = None  # YAML key "lambda": fix λ instead of choosing it on valid
    prune: bool = False
    num_workers: int = 0  # DataLoader workers per fit/evaluation
    eval_batch_size: int | None = None  # windows per evaluation batch (default batch_size; larger = fewer searches)
    datastore: dict[str, Any] = field(default_factory=dict)  # DatastoreSettings overrides (batch_size, precision)
    knn_backend: str = "auto"  # search backend for targets and the kNN-LM (auto: clustered IVF / exact on CUDA)
    cleanup: bool = False  # delete each trial's datastore and targets once it is evaluated (disk-bound studies)
    heartbeat: int = 60  # seconds between a running trial's heartbeats (RDB storages); stale after 4 of them

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"sweep spec {path} does not exist: see sweeps/ for examples")
        raw = yaml.safe_load(path.read_text()) or {}
        if "lambda" in raw:
            raw["lambda_"] = raw.pop("lambda")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"{path}: unknown keys {', '.join(unknown)}; valid keys: "
                            f"{', '.join(sorted(known - {'lambda_'}) + ['lambda'])}")
        missing = [k for k in ("study", "decoder_sizes") if k not in raw]
        if missing:
            raise UserError(f"{path}: missing required keys {', '.join(missing)}")
        spec = cls(**raw)
        spec.validate()
        return spec

    def validate(self) -> None:
        from mlpmem_lightning.knn.targets import TargetSettings
        from mlpmem_lightning.models.ladder import get_memory_size, get_size

        for s in [*self.decoder_sizes, *(p.get("decoder_size", "?") for p in self.extra_points)]:
            get_size(s)
        if self.memory_sizes != "matched":
            for s in self.memory_sizes:
                get_memory_size(s)
        if self.sampler not in ("grid", "random", "tpe"):
            raise UserError(f"sampler {self.sampler!r}: choose grid, random or tpe")
        if not 0 <= self.alpha <= 1 or (self.lambda_ is not None and not 0 <= self.lambda_ <= 1):
            raise UserError("alpha and lambda must lie in [0, 1]")
        bad = sorted(set(self.knn) - {f.name for f in fields(TargetSettings)})
        if bad:
            raise UserError(f"unknown knn keys {', '.join(bad)}: see `mlpmem targets --help`")
        from mlpmem_lightning.knn.datastore import DatastoreSettings
        from mlpmem_lightning.knn.search import choices as backend_choices

        bad = sorted(set(self.datastore) - {"batch_size", "precision", "layer"})
        if bad:
            raise UserError(f"unknown datastore keys {', '.join(bad)}: use batch_size, precision or layer")
        if self.knn_backend not in backend_choices():
            raise UserError(f"knn_backend {self.knn_backend!r}: choose one of {', '.join(backend_choices())}")
        DatastoreSettings(**self.datastore)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/sweeps/{self.study}")

    def grid(self) -> list[dict[str, Any]]:
        """Every (decoder size, memory size, seed) point of the study."""
        from mlpmem_lightning.models.ladder import matched_memory

        points = []
        for dec, seed in itertools.product(self.decoder_sizes, self.seeds):
            mems = [matched_memory(dec).name] if self.memory_sizes == "matched" else self.memory_sizes
            points += [{"decoder_size": dec, "memory_size": m, "seed": seed} for m in mems]
        for p in self.extra_points:
            point = {"decoder_size": p["decoder_size"], "memory_size": p.get("memory_size")
                     or matched_memory(p["decoder_size"]).name, "seed": int(p.get("seed", 0))}
            if point not in points:
                points.append(point)
        return points


class OptunaPruning(Callback):
    """Reports val/loss to the active trial at each validation (by global step) and prunes when told."""

    def on_validation_end(self, trainer, pl_module) -> None:
        import optuna

        trial = _ACTIVE_TRIAL
        loss = trainer.callback_metrics.get("val/loss")
        if trial is None or loss is None or trainer.sanity_checking:
            return
        trial.report(float(loss), step=trainer.global_step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {trainer.global_step}")


# -- storage and study ------------------------------------------------------------------------------
def open_storage(spec: SweepSpec):
    import optuna

    url = spec.storage or f"sqlite:///{spec.out_dir / 'optuna.db'}"
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                          if url.startswith("sqlite") else {},
                                          heartbeat_interval=spec.heartbeat, grace_period=4 * spec.heartbeat)
    except Exception as err:  # sqlalchemy, file-system and lock errors come in many types
        raise UserError(f"cannot open sweep storage {url} ({type(err).__name__}: {str(err).splitlines()[0]}): "
                        "check the path/URL and that no other process holds a lock on it") from None


def make_sampler(spec: SweepSpec, seed: int = 0):
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return None  # grid: points are enqueued explicitly


def run_sweep(spec_path: str | Path, out: str | Path | None = None) -> Path:
    """Run (or resume) the study (``out`` overrides the spec's); returns the path of ``results.csv``."""
    import optuna

    spec = SweepSpec.load(spec_path)
    if out is not None:
        spec.out, spec.storage, spec.token_store = str(out), None, None
    storage = open_storage(spec)
    study = optuna.create_study(study_name=spec.study, storage=storage, load_if_exists=True,
                                direction="minimize", sampler=make_sampler(spec))
    _fail_dead_trials(study)
    from mlpmem_lightning.study.pipeline import prepare_tokens

    prepare_tokens(spec)
    callbacks = [lambda study, trial: collect_results(study, spec)]  # results.csv holds every finished trial
    if spec.sampler != "grid":
        study.optimize(lambda t: objective(t, spec), n_trials=spec.n_trials or len(spec.grid()),
                       catch=(Exception,), callbacks=callbacks)
        return collect_results(study, spec)
    todo = _enqueue_grid(study, spec)
    log.info("study %s: %d of %d grid points to run", spec.study, todo, len(spec.grid()))
    # one trial at a time while the queue holds any: workers sharing the study take turns from it
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        study.optimize(lambda t: objective(t, spec), n_trials=1, catch=(Exception,), callbacks=callbacks)
    return collect_results(study, spec)


def _enqueue_grid(study, spec: SweepSpec) -> int:
    """Enqueue the grid points no trial has finished, runs or waits for; fail queued trials that are
    no longer grid points (the grid was edited, or an older version queued them). Returns the number
    of points left to run."""
    import optuna

    S = optuna.trial.TrialState
    grid = {_key(p): p for p in spec.grid()}
    taken = set()
    for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.RUNNING, S.WAITING)):
        point = json.loads(t.user_attrs["point"]) if "point" in t.user_attrs else t.user_attrs
        if t.state == S.WAITING and _key(point) not in grid:
            _fail(study, t, "not a point of the current grid")
        else:
            taken.add(_key(point))
    for key, point in grid.items():  # the point rides as a user attribute: editing the grid later breaks nothing
        if key not in taken:
            study.enqueue_trial({}, user_attrs={"point": json.dumps(point)})
    return len(study.get_trials(deepcopy=False, states=(S.WAITING,)))


def _key(point: dict[str, Any]) -> tuple:
    return point.get("decoder_size"), point.get("memory_size"), int(point.get("seed", -1))


def _fail_dead_trials(study) -> None:
    """Fail the RUNNING trials whose worker is dead; leave live workers' trials alone.

    Several workers may share one study. A trial records its worker (host and pid) when it starts: a
    worker on this host that no longer exists was killed, so its trial fails at once and its point
    is queued again. Workers on other hosts are judged by Optuna's heartbeat (RDB storages):
    ``fail_stale_trials`` fails a trial whose heartbeat is older than the grace period.
    """
    import optuna

    optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = t.user_attrs.get("worker", "").partition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            _fail(study, t, "interrupted (its worker process was killed)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid
        return True
    return True


def _fail(study, trial, why: str) -> None:
    import optuna

    study._storage.set_trial_user_attr(trial._trial_id, "error", why)
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def collect_results(study, spec: SweepSpec) -> Path:
    import optuna

    rows = [r for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
            for r in json.loads(t.user_attrs.get("rows", "[]"))]
    path = spec.out_dir / "results.csv"
    unique = {(r["arch"], r["decoder_size"], r["memory_size"], r["seed"], r["split"]): r for r in rows}
    if unique:
        write_results(list(unique.values()), path)
        trials = [{"trial": t.number, **{k: v for k, v in t.user_attrs.items() if k != "rows"}}
                  for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        artifacts.atomic_write_text(spec.out_dir / "trials.csv", pd.DataFrame(trials).to_csv(index=False))
    return path


# -- one trial ---------------------------------------------------------------------------------------
def suggest_point(trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's (decoder size, memory size, seed): an enqueued grid point as enqueued, else sampled.

    Grid points are not Optuna parameters: a categorical's choices may not change within a study, and a
    researcher who adds or drops a size and resumes must not break it. Random/TPE studies sample
    categoricals, so their size lists are fixed for the study's life (use a new ``study`` name).
    """
    from mlpmem_lightning.models.ladder import matched_memory

    if "point" in trial.user_attrs:
        return json.loads(trial.user_attrs["point"])
    if spec.sampler == "grid":  # another worker emptied the queue between our look and our pop
        import optuna

        raise optuna.TrialPruned("no grid point left in the queue")
    grid = spec.grid()
    dec = trial.suggest_categorical("decoder_size", sorted({p["decoder_size"] for p in grid}))
    seed = trial.suggest_categorical("seed", sorted({p["seed"] for p in grid}))
    if spec.memory_sizes == "matched":
        mem = matched_memory(dec).name
    else:
        mem = trial.suggest_categorical("memory_size", sorted({p["memory_size"] for p in grid}))
    return {"decoder_size": dec, "memory_size": mem, "seed": int(seed)}


def objective(trial, spec: SweepSpec) -> float:
    from mlpmem_lightning.study.pipeline import run_pipeline

    global _ACTIVE_TRIAL
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # see _fail_dead_trials
    point = suggest_point(trial, spec)
    _ACTIVE_TRIAL = trial if spec.prune else None
    try:
        rows, attrs = run_pipeline(spec, **point)
    except Exception as err:
        trial.set_user_attr("error", f"{type(err).__name__}: {err}")
        log.error("trial %d %s failed: %s", trial.number, point, err)
        raise
    finally:
        _ACTIVE_TRIAL = None
    for row in rows:
        row["trial"] = trial.number
    for key, value in {**point, **attrs}.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("rows", json.dumps(rows))
    return next(r["loss"] for r in rows if r["arch"] == "mlp_memory" and r["split"] == "valid")
