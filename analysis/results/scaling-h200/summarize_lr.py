"""Summarise the H200 learning-rate search of sweeps/scaling-h200-lr.yaml (issue #15).

    python analysis/results/scaling-h200/summarize_lr.py RUNS_DIR   # RUNS_DIR: runs/sweeps/scaling-h200 as it came back

Reads <RUNS_DIR>/scaling-h200-lr/lr_search.db (each trial's decoder run) and each run's convergence.json and
metrics.csv; writes lr_runs.csv (one row per fit) and decoder_fit.json (L = E + A·N^-α over non-embedding parameters
at each rung's chosen LR, valid split, 1 seed, bootstrap over the 7 rungs) beside this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pandas as pd

from mlpmem_lightning.models.ladder import get_size, non_embedding_params
from mlpmem_lightning.study.analysis.fits import fit_power_law

HERE = Path(__file__).parent


def runs(root: Path) -> pd.DataFrame:
    storage = f"sqlite:///{root / 'scaling-h200-lr' / 'lr_search.db'}"
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        size = summary.study_name.split("-")[1]
        for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials:
            if t.state != optuna.trial.TrialState.COMPLETE:
                continue
            run = root / "decoders" / Path(t.user_attrs["decoder_run"]).name
            conv = json.loads((run / "convergence.json").read_text())
            m = pd.read_csv(run / "metrics.csv")
            speed = m["train/tokens_per_sec"].dropna() if "train/tokens_per_sec" in m else pd.Series(dtype=float)
            rows.append({"decoder_size": size, "params_non_embedding": non_embedding_params(get_size(size)),
                         "lr": t.params["lr"], "val_loss": t.value, "converged": conv["converged"],
                         "last10_improvement": conv["last10_improvement"], "steps": conv["total_steps"],
                         "tokens_per_sec_median": float(speed.median()) if len(speed) else None,
                         "fit_wall_s": (t.datetime_complete - t.datetime_start).total_seconds()})
    return pd.DataFrame(rows).sort_values(["params_non_embedding", "lr"])


def main(root: Path) -> None:
    df = runs(root)
    df.to_csv(HERE / "lr_runs.csv", index=False)
    best = df.loc[df.groupby("decoder_size")["val_loss"].idxmin()].sort_values("params_non_embedding")
    fit = fit_power_law(best["params_non_embedding"], best["val_loss"], bootstrap=2000)
    out = {k: v for k, v in fit.items() if k != "samples"}
    out["points"] = best[["decoder_size", "params_non_embedding", "lr", "val_loss"]].to_dict("records")
    (HERE / "decoder_fit.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(best.to_string(index=False))
    print(f"L = {fit['E']:.3f} + {fit['A']:.3g} N^-{fit['alpha']:.3f}; alpha 95% [{fit['alpha_ci'][0]:.3f}, "
          f"{fit['alpha_ci'][1]:.3f}] identified={fit['alpha_identified']}; E [{fit['E_ci'][0]:.3f}, {fit['E_ci'][1]:.3f}]")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
