"""The #15 study's report over both of its sweeps: the decoder-only half (decoders/, 2 seeds x 2 budgets per rung)
and the kNN-LM + memory half (SWEEP_DIR: partial/ while it runs, then the finished sweep's tables).

    python analysis/results/scaling-h200/final_report.py [SWEEP_DIR [OUT_DIR]]     # default: partial/, here

    # the kNN-LM + memory half again after the probe-set fix (sweeps/scaling-h200-fixed.yaml), beside this decoder-only half:
    python analysis/results/scaling-h200/final_report.py analysis/results/scaling-h200-fixed/partial \
        analysis/results/scaling-h200-fixed

Writes into OUT_DIR (default: beside this script): results.csv (the two halves' results.csv, one after the other: the report orders each
study by size with its own seed noise, and pairs every comparison within a study), report/ (`mlpmem report` over
it) and stage_seconds.md (process-seconds per stage, summed over each sweep's trials.csv, and per trial).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from mlpmem_lightning.study.report import write_report
from mlpmem_lightning.study.report.memory_summary import trials_table

HERE = Path(__file__).parent


def stage_seconds(trials: dict[str, pd.DataFrame]) -> list[str]:
    """Per sweep: the sum of each stage's seconds over its trials (workers overlap, so this is process time, not
    wall time), then every trial's seconds per stage."""
    lines = ["# Seconds per stage", ""]
    for name, df in trials.items():
        sums = df[[c for c in df.columns if c.startswith("time_") and c.endswith("_s")]].sum()
        lines += [f"## {name} ({len(df)} trials)", "", "| stage | process-seconds |", "|---|---|",
                  *[f"| {c[len('time_'):-len('_s')]} | {v:.0f} |" for c, v in sums.items()],
                  f"| all | {sums.sum():.0f} |", "",
                  *trials_table(df, {"decoder": "decoder_size", "seed": "seed", "budget": "decoder_budget"}), ""]
    return lines


def main(sweep: Path, dest: Path = HERE) -> None:
    tables = {"decoders": HERE / "decoders", "sweep": sweep}
    results = pd.concat([pd.read_csv(d / "results.csv") for d in tables.values()], ignore_index=True)
    out = Path(os.path.relpath(dest / "results.csv"))  # relative, so that report.md names no one's home directory
    results.to_csv(out, index=False)
    write_report(out, dest / "report")
    trials = {name: pd.read_csv(d / "trials.csv") for name, d in tables.items() if (d / "trials.csv").is_file()}
    (dest / "stage_seconds.md").write_text("\n".join(stage_seconds(trials)) + "\n")
    print(f"{dest / 'report' / 'report.md'}, {dest / 'stage_seconds.md'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "partial", Path(sys.argv[2]) if len(sys.argv) > 2 else HERE)
