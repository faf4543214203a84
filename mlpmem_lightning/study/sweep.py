"""`mlpmem sweep --config sweeps/NAME.yaml`: an Optuna study over decoder and memory sizes (and swept settings).

Each trial runs the pipeline for its (decoder size, memory size, seed): the shared stages its
architectures need (fit the decoder -> datastore -> targets), then each architecture of the study
(``architectures:``, default every registered one) trains what is its own and is evaluated, with λ
picked on valid over the grid (or fixed by the spec) and test reported at that λ. The trial's value is
the valid loss of the ``objective`` architecture (default ``mlp_memory``). Artifacts live under
``out/`` keyed by what they depend on, so trials that share a decoder reuse its checkpoint, datastore
and targets, and an interrupted trial resumes its stages. The study lives in Optuna storage (SQLite by
default, a journal file for shared file systems, or any RDB URL); a restarted sweep re-runs only
unfinished grid points. Grid points, swept settings and each evaluated λ are Optuna parameters
(:mod:`.recording`, :mod:`.axes`), so optuna-dashboard can plot them. Every trial stores its rows as a user
attribute; ``<out>/<study>/results.csv`` (the
results table) and ``<out>/<study>/trials.csv`` (one row per trial: sizes, FLOPs and wall seconds per stage) are
rebuilt from the storage after every trial: studies sharing an ``out`` share artifacts, never tables. Workers
sharing the study take turns on its queue and on the artifacts they share (:mod:`.locks`). A sweep in which
no trial finished is an error that quotes the first trial's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch.callbacks import Callback

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import axes, locks, recording
from mlpmem_lightning.study.results import write_results
from mlpmem_lightning.study.spec import SweepSpec

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    """Reports ``val/loss`` to its trial at each validation, by global step, and prunes when the pruner says so.

    Not optuna-integration's ``PyTorchLightningPruningCallback``: it reports by epoch (``pl_module.current_epoch``),
    while our fits validate several times per epoch (``val_check_interval`` 0.1-0.25, and a token budget is often
    under one epoch); Optuna keeps one report per step, so the pruner would see only each epoch's first validation.
    It also reads a private Trainer attribute (``trainer._accelerator_connector``).
    """

    def __init__(self, trial, monitor: str = "val/loss"):
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer, pl_module) -> None:
        import optuna

        loss = trainer.callback_metrics.get(self.monitor)
        if loss is None or trainer.sanity_checking:
            return
        self.trial.report(float(loss), step=trainer.global_step)
        if self.trial.should_prune():
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
    except ImportError as err:  # the URL's database driver (psycopg2, pymysql…) is not installed
        raise UserError(missing_driver(url, _missing_module(err))) from None
    except Exception as err:  # sqlalchemy, file-system and lock errors come in many types
        raise UserError(f"cannot open sweep storage {url} ({type(err).__name__}: {str(err).splitlines()[0]}): "
                        "check the path/URL and that no other process holds a lock on it") from None


EXTRAS = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def missing_driver(url: str, module: str | None) -> str:
    """The one line for a storage URL whose database driver is not installed: the extra that installs it."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    extra = EXTRAS.get(scheme)
    fix = f"pip install 'mlpmem-lightning[{extra}]'" if extra else f"pip install the {module} package"
    return f"sweep storage {url.split('@')[-1]} needs the database driver {module}, which is not installed: {fix}"


def _missing_module(err: BaseException | None) -> str | None:
    """The module an import error (or the error it wraps: Optuna's RDB storage wraps SQLAlchemy's) failed on."""
    while err is not None:
        if isinstance(err, ImportError) and err.name:
            return err.name
        err = err.__cause__ or err.__context__
    return None


def make_sampler(spec: SweepSpec, seed: int = 0):
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return recording.point_sampler()  # grid: points are enqueued; the sampler hands each trial its point


def run_sweep(spec_path: str | Path, out: str | Path | None = None,
              overrides: dict[str, Any] | None = None) -> Path:
    """Run (or resume) the study (``out`` overrides the spec's, ``overrides`` its keys: ``--set``); returns the path
    of its ``results.csv``."""
    import optuna

    from mlpmem_lightning.study import pipeline
    from mlpmem_lightning.study.workers import limit_gpu_memory

    limit_gpu_memory()  # a worker of `mlpmem sweep --workers N`: at most 1/N of the GPU's memory
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "Trial 0 finished … Best is trial 0": ours below
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, every trial
    recording.quiet_lightning()
    warnings.filterwarnings("ignore", message="The dirpath has changed")  # every evaluation of a fitted run
    spec = SweepSpec.load(spec_path, overrides)
    pipeline.select(spec)  # unknown architectures or objective: refused before anything runs
    if out is not None:
        spec.out, spec.storage, spec.token_store = str(out), None, None
    storage = open_storage(spec)
    queue = locks.QueueLock(spec.out_dir, spec.study)
    with queue:  # workers starting together: one creates the study and queues the grid, the others find it
        study = optuna.create_study(study_name=spec.study, storage=storage, load_if_exists=True,
                                    direction="minimize", sampler=make_sampler(spec))
        _fail_dead_trials(study)
        todo = _enqueue_grid(study, spec) if spec.sampler == "grid" else 0
        stale = _stale_waiting(study, spec)
    pipeline.prepare_tokens(spec)
    callbacks = [lambda study, trial: after_trial(study, trial, spec, storage)]
    if spec.sampler != "grid":
        study.optimize(lambda t: objective(t, spec), n_trials=spec.n_trials or len(spec.grid()),
                       catch=(Exception,), callbacks=callbacks)
        return finish(study, spec)
    log.info("study %s: %d of %d grid points to run", spec.study, todo, len(spec.grid()))
    # one trial at a time while the queue holds any: "is a point waiting?" and popping it are one step under the
    # queue lock (released by the objective once Optuna has popped its trial), so no worker opens an empty trial
    while queue.acquire() and study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        study.optimize(lambda t: objective(t, spec, stale, popped=queue.release), n_trials=1, catch=(Exception,),
                       callbacks=callbacks)
        queue.release()
    queue.release()
    return finish(study, spec)


def after_trial(study, trial, spec: SweepSpec, storage) -> None:
    """A finished trial: its λ points into the study, the tables rebuilt, its summary line printed."""
    import optuna

    if trial.state == optuna.trial.TrialState.COMPLETE:
        recording.record_lambda_points(study, trial, spec, storage)
        print(recording.summary_line(trial, spec), flush=True)
    collect_results(study, spec)  # results.csv holds every finished trial


def finish(study, spec: SweepSpec) -> Path:
    """Write the study's tables; an error quoting the first failed trial when no trial of the study finished."""
    import optuna

    S = optuna.trial.TrialState
    path = collect_results(study, spec)
    trials = [t for t in study.get_trials(deepcopy=False) if not recording.is_lambda_point(t)]
    if any(t.state == S.COMPLETE for t in trials):
        lost = _failed_points(study)
        if lost:
            log.warning("study %s: %d grid points have no finished trial (%s): see `error` in %s",
                        spec.study, len(lost), "; ".join(lost), spec.out_dir / "optuna.db")
        if path.is_file():
            print(f"study {spec.study}: results in {path}\n{recording.short_table(pd.read_csv(path))}", flush=True)
        return path
    if busy := [t for t in trials if t.state in (S.RUNNING, S.WAITING)]:  # another worker has them: not a failure
        log.info("study %s: this worker found no point left; %d trials are with other workers", spec.study, len(busy))
        return path
    failed = [t for t in trials if t.state == S.FAIL]
    if not failed:
        raise UserError(f"no trial of study {spec.study!r} finished ({len(trials)} trials, none failed: "
                        "all pruned?): nothing written")
    first = failed[0]
    why = first.user_attrs.get("error", "interrupted (its worker was killed)")
    hint = ("; each of N sweep workers may use 1/N of the GPU's memory: run fewer --workers, or lower batch_size "
            "or eval_batch_size" if "OutOfMemoryError" in str(why) else "")
    raise UserError(f"every trial of study {spec.study!r} failed ({len(failed)} trials; no results written); "
                    f"the first, trial {first.number} {_point_text(first)}: {' '.join(str(why).split())}{hint}")


def _point_text(trial) -> str:
    point = _queued_point(trial)
    return f"({point.get('decoder_size')}, {point.get('memory_size')}, seed {point.get('seed')})"


def _failed_points(study) -> list[str]:
    import optuna

    S = optuna.trial.TrialState
    done = {_key(_queued_point(t)) for t in study.get_trials(deepcopy=False, states=(S.COMPLETE,))}
    lost = {}
    for t in study.get_trials(deepcopy=False, states=(S.FAIL,)):
        if _key(_queued_point(t)) not in done and "error" in t.user_attrs:
            lost.setdefault(_key(_queued_point(t)), f"trial {t.number}: {str(t.user_attrs['error']).splitlines()[0]}")
    return list(lost.values())


def _queued_point(trial) -> dict[str, Any]:
    return json.loads(trial.user_attrs["point"]) if "point" in trial.user_attrs else dict(trial.user_attrs)


def _enqueue_grid(study, spec: SweepSpec) -> int:
    """Enqueue the grid points no trial has finished, runs or waits for. Returns the number of points left to run
    (queued trials that are no longer grid points are not counted: they fail when popped, see ``objective``)."""
    import optuna

    S = optuna.trial.TrialState
    grid = {_key(p): p for p in spec.grid()}
    taken, todo = set(), 0
    for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.RUNNING, S.WAITING)):
        if recording.is_lambda_point(t):
            continue
        key = _key(_queued_point(t))
        if t.state != S.WAITING or key in grid:
            taken.add(key)
            todo += t.state == S.WAITING
    for key, point in grid.items():  # the point rides as a user attribute: editing the grid later breaks nothing
        if key not in taken:
            study.enqueue_trial({}, user_attrs={"point": json.dumps(point)})
            todo += 1
    return todo


def _stale_waiting(study, spec: SweepSpec) -> frozenset[int]:
    """Numbers of the queued trials that are not points of the current grid (the grid was edited, or an older
    version queued them).

    They are failed when popped, not here: Optuna's public API cannot fail a WAITING trial (``Study.tell`` takes
    RUNNING trials only, and ``Study.ask`` pops the oldest WAITING trial, not a chosen one).
    """
    import optuna

    grid = {_key(p) for p in spec.grid()}
    return frozenset(t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
                     if _key(_queued_point(t)) not in grid)


def _key(point: dict[str, Any]) -> tuple:
    """A point's identity: sizes, seed, budget and the swept settings it carries (an older point carries none)."""
    return (point.get("decoder_size"), point.get("memory_size"), int(point.get("seed", -1)),
            point.get("decoder_budget"), *sorted((k, v) for k, v in point.items() if k in axes.AXES))


def _fail_dead_trials(study) -> None:
    """Fail the RUNNING trials whose worker is dead; leave live workers' trials alone.

    Several workers may share one study. A trial records its worker (host and pid) when it starts: a
    worker on this host that no longer exists was killed, so its trial fails at once and its point
    is queued again. Workers on other hosts are judged by Optuna's heartbeat (RDB storages):
    ``fail_stale_trials`` fails a trial whose heartbeat is older than the grace period. Like those, a
    trial failed here has no ``error`` attribute (the public API sets attributes only from inside a trial):
    a FAIL without one was interrupted; the reason is logged.
    """
    import optuna

    optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        host, _, pid = t.user_attrs.get("worker", "").partition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d failed: interrupted (its worker process %s was killed)", t.number, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid
        return True
    return True


def collect_results(study, spec: SweepSpec) -> Path:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and not recording.is_lambda_point(t)]
    rows = [r for t in done for r in json.loads(t.user_attrs.get("rows", "[]"))]
    path = spec.study_dir / "results.csv"
    unique = {(r["arch"], r["decoder_size"], r["memory_size"], r["seed"], r["split"], r.get("decoder_budget"),
               *sorted((k, v) for k, v in r.items() if k in axes.AXES)): r for r in rows}
    if unique:
        spec.study_dir.mkdir(parents=True, exist_ok=True)
        write_results(list(unique.values()), path)
        trials = [{"trial": t.number, **{k: v for k, v in t.user_attrs.items() if k != "rows"}} for t in done]
        artifacts.atomic_write_text(spec.study_dir / "trials.csv", pd.DataFrame(trials).to_csv(index=False))
    return path


# -- one trial ---------------------------------------------------------------------------------------
def suggest_point(trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's (decoder size, memory size, seed, swept settings): an enqueued grid point as enqueued (and
    recorded as its parameters, :mod:`.recording`), else sampled.

    Random/TPE studies sample categoricals, so their size lists are fixed for the study's life (use a new
    ``study`` name); settings with a sampler range are drawn from it.
    """
    from mlpmem_lightning.study.decoders import decoder_source

    if "point" in trial.user_attrs:
        point = json.loads(trial.user_attrs["point"])
        recording.record_params(trial, spec, point)
        return point
    if spec.sampler == "grid":  # another worker emptied the queue between our look and our pop
        import optuna

        raise optuna.TrialPruned("no grid point left in the queue")
    grid = spec.grid()
    dec = trial.suggest_categorical("decoder_size", sorted({p["decoder_size"] for p in grid}))
    seed = trial.suggest_categorical("seed", sorted({p["seed"] for p in grid}))
    if spec.memory_sizes == "matched":
        mem = decoder_source(spec.base, dec).matched_memory()
    else:
        mem = trial.suggest_categorical("memory_size", sorted({p["memory_size"] for p in grid}))
    point = {"decoder_size": dec, "memory_size": mem, "seed": int(seed)}
    if spec.decoder_budgets:
        point["decoder_budget"] = trial.suggest_categorical("decoder_budget", sorted(spec.decoder_budgets))
    for name, values in axes.swept(spec).items():
        point[name] = trial.suggest_categorical(name, sorted(set(values)))
    for name, r in spec.ranges.items():
        suggest = trial.suggest_int if name in axes.INTEGER else trial.suggest_float
        point[name] = suggest(name, r["low"], r["high"], log=bool(r.get("log")))
    return point


def objective(trial, spec: SweepSpec, stale: frozenset[int] = frozenset(), popped=lambda: None) -> float:
    """Run the trial's pipeline; its value is the valid loss of the spec's ``objective`` architecture.

    ``popped`` is called first: the trial is out of the queue (the sweep releases its queue lock)."""
    from mlpmem_lightning.study.pipeline import run_pipeline

    popped()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # see _fail_dead_trials
    if trial.number in stale:
        trial.set_user_attr("error", "not a point of the current grid")
        raise UserError(f"trial {trial.number} is not a point of the current grid")
    point = suggest_point(trial, spec)
    callbacks = [OptunaPruning(trial)] if spec.prune else []
    sizes = {k: point[k] for k in (*axes.POINT, "decoder_budget") if k in point}  # the budget picks the decoder
    try:
        rows, attrs = run_pipeline(axes.at(spec, point), **sizes, callbacks=callbacks)
    except Exception as err:
        trial.set_user_attr("error", f"{type(err).__name__}: {err}")
        log.error("trial %d %s failed: %s", trial.number, point, err)
        raise
    for row in rows:  # the swept settings are columns of the results table
        row.update({k: v for k, v in point.items() if k in axes.AXES}, trial=trial.number)
    for key, value in {**point, **attrs}.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("rows", json.dumps(rows))
    valid = {r["arch"]: r["loss"] for r in rows if r["split"] == "valid"}
    # a smaller decoder budget runs the baseline alone (pipeline.runs_at_budget): its loss is the trial's value then
    return valid.get(spec.objective, next(iter(valid.values())))
