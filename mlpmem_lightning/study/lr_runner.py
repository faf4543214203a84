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


def run_lr_search(spec_path: str | Path) -> Path:
    """Search every rung of the spec; write and return ``<out>/<study>/lr.csv``."""
    from mlpmem_lightning.study.pipeline import prepare_tokens
    from mlpmem_lightning.study.spec import SweepSpec

    spec = SweepSpec.load(spec_path)
    opts = spec.lr_search
    grid = [float(x) for x in opts.get("grid", DEFAULT_GRID)]
    store = prepare_tokens(spec)
    budget = float(opts.get("budget", 1.0))
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    out = spec.study_dir / "lr.csv"
    for size in spec.decoder_sizes:
        rows = _search_rung(spec, size, budget, grid, int(opts.get("max_extensions", 2)), store)
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


def _search_rung(spec, size: str, budget: float, grid: list[float], max_extensions: int,
                 store: Path) -> list[dict[str, Any]]:
    import optuna

    probe = _stages(spec, size, budget, store)
    tokens = probe.decoder_budget_tokens
    args = {k: v for k, v in probe.decoder_model["init_args"].items() if k != "lr"}
    model = {**probe.decoder_model, "init_args": args}
    key = probe.key(size, tokens, grid, probe.config_key("fit", model))  # token store fingerprint included
    study = optuna.create_study(study_name=f"lr-{size}-{key}", direction="minimize", load_if_exists=True,
                                storage=f"sqlite:///{spec.study_dir / 'lr_search.db'}")
    done = {t.params["lr"]: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}

    def fit(trial) -> float:
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

    def objective(lr: float) -> float:
        study.enqueue_trial({"lr": lr})
        study.optimize(fit, n_trials=1, catch=())
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
