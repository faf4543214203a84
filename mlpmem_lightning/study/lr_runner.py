"""`mlpmem lr-search --config SPEC`: one Optuna study per rung, the sweep's decoder fit as its objective.

The selection (lowest validation loss, edge extension) and the reuse of the record are :mod:`.lr_search`'s; this
module runs the fits. See docs/recipe.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.lr_search import DEFAULT_GRID, LR_RANGE, choose, search
from mlpmem_lightning.study.workers import run_processes


def run_lr_search(spec_path: str | Path, workers: int = 1, size: str | None = None, lr: float | None = None) -> Path:
    """Search every rung of the spec (or only ``size``; with ``lr``, only fit that one grid point); write and
    return ``<out>/<study>/lr.csv``.

    With ``workers`` > 1 the fits run in that many processes sharing the device (each 1/N of a GPU's memory):
    first every (rung, grid LR) at once, largest rung first, then each rung's extensions past an edge, one process
    per rung. A rung's search is serial by nature (an extension needs the grid's losses) but the grid is not, and
    at the study's sizes one fit leaves most of an H200 idle."""
    from mlpmem_lightning.study import locks
    from mlpmem_lightning.study.pipeline import prepare_tokens
    from mlpmem_lightning.study.spec import SweepSpec
    from mlpmem_lightning.study.workers import limit_gpu_memory

    limit_gpu_memory()  # a worker of `lr-search --workers N`
    spec = SweepSpec.load(spec_path)
    opts = spec.lr_search
    grid = [float(x) for x in opts.get("grid", DEFAULT_GRID)]
    store = prepare_tokens(spec)
    budget = float(opts.get("budget", 1.0))
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    out = spec.study_dir / "lr.csv"
    if size is not None and size not in spec.decoder_sizes:
        raise UserError(f"--size {size} is not one of the spec's decoder_sizes ({', '.join(spec.decoder_sizes)})")
    sizes = [size] if size else spec.decoder_sizes
    if lr is not None:
        for s in sizes:
            _grid_point(spec, s, budget, grid, store, lr)
        return out
    if workers > 1:
        _run_workers(spec_path, spec, sizes, grid, workers, budget, store)
    for size in sizes:
        rows = _search_rung(spec, size, budget, grid, int(opts.get("max_extensions", 2)), store)
        with locks.waiting_for(spec.out_dir, out):  # the other rungs' processes write it too
            _record(out, rows)
        best = next(r for r in rows if r["chosen"])
        edge = ", AT THE EDGE" if best["at_edge"] else ""
        print(f"{size}: lr {best['lr']:g} (valid loss {best['val_loss']:.4f}{edge}) at {best['tokens']:,} tokens")
    return out


def _stages(spec, size: str, budget: float, store: Path, lr: float | None = None):
    from mlpmem_lightning.models.ladder import matched_memory
    from mlpmem_lightning.study.stages import Stages

    return Stages(dataclasses.replace(spec, decoder_lr=lr), size, matched_memory(size).name, spec.seeds[0], store,
                  budget=budget)


def _run_workers(spec_path, spec, sizes: list[str], grid: list[float], workers: int, budget: float,
                 store: Path) -> None:
    """Every unfinished (rung, grid LR) fit, then every rung's extensions, in ``workers`` processes at a time."""
    def cost(size: str) -> int:  # the fit's training FLOPs: the largest rungs start first
        from mlpmem_lightning.models.flops import decoder_train_flops

        st = _stages(spec, size, budget, store)
        return decoder_train_flops(st.rung, st.vocab, spec.seq_len, st.decoder_tokens, family="llama")

    by_cost = sorted(sizes, key=cost, reverse=True)
    done = {s: _rung_study(spec, s, budget, grid, store)[1] for s in by_cost}  # one storage read per rung
    fits = [["--size", s, "--lr", repr(lr)] for s in by_cost for lr in grid if lr not in done[s]]
    rungs = [["--size", s] for s in by_cost]
    logs = spec.study_dir / "workers"
    for phase, tasks in (("grid", fits), ("extensions", rungs)):
        print(f"lr-search: {len(tasks)} {phase} task(s) in {workers} processes, logs in {logs}/lr-*.log", flush=True)
        run_processes([["lr-search", "--config", str(spec_path), *t] for t in tasks], workers, logs, f"lr-{phase}-")


def _rung_study(spec, size: str, budget: float, grid: list[float], store: Path):
    """The rung's Optuna study (one per rung, token budget, grid and training config) and its finished LRs."""
    import optuna

    probe = _stages(spec, size, budget, store)
    args = {k: v for k, v in probe.decoder_model["init_args"].items() if k != "lr"}
    model = {**probe.decoder_model, "init_args": args}
    key = probe.key(size, probe.decoder_budget_tokens, grid, probe.config_key("fit", model))  # token store too
    study = optuna.create_study(study_name=f"lr-{size}-{key}", direction="minimize", load_if_exists=True,
                                storage=f"sqlite:///{spec.study_dir / 'lr_search.db'}")
    done = {t.params["lr"]: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    return study, done


def _grid_point(spec, size: str, budget: float, grid: list[float], store: Path, lr: float) -> None:
    """Fit one LR of the rung's grid as a trial of its study (a ``--workers`` task); nothing if already done."""
    study, done = _rung_study(spec, size, budget, grid, store)
    if lr not in done:
        study.enqueue_trial({"lr": lr})
        study.optimize(lambda trial: _fit(trial, spec, size, budget, store), n_trials=1, catch=())


def _fit(trial, spec, size: str, budget: float, store: Path) -> float:
    """One decoder fit at the trial's LR (the sweep's own decoder stage); its last validation loss."""
    st = _stages(spec, size, budget, store, trial.suggest_float("lr", *LR_RANGE, log=True))
    trial.set_user_attr("decoder_run", str(st.decoder_run))
    try:
        st.run_shared(["decoder"])
    except UserError as err:
        if "NaN/inf" not in str(err):
            raise
        return math.inf  # diverged: the worst loss, so the search moves away from it
    from mlpmem_lightning.lightning.convergence import read_summary

    return float(read_summary(st.decoder_run)["val_losses"][-1])


def _search_rung(spec, size: str, budget: float, grid: list[float], max_extensions: int,
                 store: Path) -> list[dict[str, Any]]:
    probe = _stages(spec, size, budget, store)
    tokens = probe.decoder_budget_tokens
    study, done = _rung_study(spec, size, budget, grid, store)

    def objective(lr: float) -> float:
        study.enqueue_trial({"lr": lr})
        study.optimize(lambda trial: _fit(trial, spec, size, budget, store), n_trials=1, catch=())
        return study.trials[-1].value

    losses = search(objective, grid, max_extensions, done)
    best, at_edge = choose(losses)
    train = probe.store.manifest["tokens"]["train"]
    return [{"study": spec.study, "decoder_size": size, "budget": budget, "tokens": tokens,
             "epochs": probe.tokens(tokens) / train, "lr": lr, "val_loss": loss, "chosen": lr == best,
             "at_edge": at_edge and lr == best, "grid": " ".join(f"{x:g}" for x in grid),
             "token_store_fingerprint": probe.store.fingerprint} for lr, loss in sorted(losses.items())]


def _record(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace this rung's rows (same size, tokens, token store) in ``lr.csv``; keep every other rung's."""
    new = pd.DataFrame(rows)
    if path.is_file():
        old = pd.read_csv(path, float_precision="round_trip")
        r = rows[0]
        same = ((old["decoder_size"] == r["decoder_size"]) & (old["tokens"] == r["tokens"])
                & (old["token_store_fingerprint"] == r["token_store_fingerprint"]))
        new = pd.concat([old[~same], new], ignore_index=True)
    artifacts.atomic_write_text(path, new.to_csv(index=False))
