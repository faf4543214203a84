"""``summary.md`` of a memory-size run on one base (issue #17, scripts/gpu_smollm2.sh): the perplexity table (base
alone, its kNN-LM, base + memory at each size, λ and T chosen on valid), the memory-size fit with its interval,
the relative gain beside the paper's, and the seconds each stage took.

    python -m mlpmem_lightning.study.report.memory_summary --results results.csv [more.csv …] [--times times.csv]
        [--trials trials.csv] --out DIR

Several results files (the sizes of one run on one base, finished in several GPU sessions) are read as one, but
only when they are one run: the same base, token store and targets (``read_results``).

The run's own numbers only: every figure is read from ``results.csv`` (the sweep's, or ``mlpmem collect``'s), the
script's ``times.csv`` (seconds per call of each command) and the sweep's ``trials.csv`` (seconds per stage of each
trial).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.analysis.memory_scaling import memory_scaling, summary_lines
from mlpmem_lightning.study.report.text import PAPER_GAIN


def valid_table(df: pd.DataFrame) -> list[str]:
    """Valid and test perplexity of every row, with the λ (and T) they ran at: what the choice on valid saw."""
    lines = ["| arch | memory | memory params | λ | T | valid ppl | test ppl |", "|---|---|---|---|---|---|---|"]
    keys = ["arch", "memory_size"]
    df = df.assign(memory_size=df["memory_size"].fillna("").astype(str))
    by = {split: df[df["split"] == split].set_index(keys) for split in ("valid", "test")}
    for key, row in by["test"].sort_values("params_memory").iterrows():
        valid = by["valid"].loc[key, "loss"] if key in by["valid"].index else np.nan
        t = row.get("temperature")
        lines.append(f"| {key[0]} | {key[1]} | {int(row['params_memory']):,} | {row['lambda']:.2f} | "
                     f"{'' if pd.isna(t) else f'{t:g}'} | {np.exp(valid):.3f} | {np.exp(row['loss']):.3f} |")
    return lines


def times_table(times: pd.DataFrame) -> list[str]:
    """Seconds per stage on the machine that ran it (a stage cut by a call's limit appears once per attempt)."""
    lines = ["| stage | seconds | exit |", "|---|---|---|"]
    lines += [f"| {r.stage} | {r.seconds:.1f} | {int(r.exit)} |" for r in times.itertuples()]
    done = times[times["exit"] == 0]
    return lines + [f"| total (attempts that finished) | {done['seconds'].sum():.1f} | |"]


def trials_table(trials: pd.DataFrame, keys: dict[str, str] | None = None) -> list[str]:
    """Seconds per stage of each trial of the sweep (a stage another trial had built shows its reuse: near 0).
    ``keys``: the columns that name a trial, by heading (default: its memory size)."""
    keys = keys or {"memory": "memory_size"}
    stages = [c for c in trials.columns if c.startswith("time_") and c.endswith("_s")]
    names = [c[len("time_"):-len("_s")] for c in stages]
    lines = ["| trial | " + " | ".join([*keys, *names]) + " |", "|---" * (1 + len(keys) + len(names)) + "|"]
    for r in trials.sort_values("trial").to_dict("records"):
        cells = [str(r.get(c, "")) for c in keys.values()] + ["" if pd.isna(r[c]) else f"{r[c]:.1f}" for c in stages]
        lines.append(f"| {r['trial']} | " + " | ".join(cells) + " |")
    total = trials[stages].sum(numeric_only=True).sum()
    return lines + ["", f"Sum over trials and stages: {total:.1f} s (GPU-seconds when the trials ran one at a time; "
                        "with several workers they overlap)."]


def span_line(df: pd.DataFrame) -> list[str]:
    """The memories' span in non-embedding parameters (the ratios x0.25 … x2 are of those; the fit's axis counts
    the memory's vocabulary head as well, a constant that narrows the span)."""
    test = df[df["split"] == "test"]
    base = test.loc[test["arch"] == "decoder", "params_non_embedding"]
    memory = test.loc[test["arch"] == "mlp_memory", "params_non_embedding"]
    if base.empty or memory.empty:
        return []
    own = memory - float(base.iloc[0])
    return [f"Memory non-embedding parameters {int(own.min()):,} … {int(own.max()):,}: a {own.max() / own.min():.1f}x "
            "span (the fit's axis, `params_memory`, includes each memory's vocabulary head)."]


def gain_lines(result: dict) -> list[str]:
    """The best size's relative perplexity change against the base, beside the paper's −8%."""
    sizes = result["sizes"]
    if "ppl_change_vs_base" not in sizes:
        return []
    best = sizes.loc[sizes["ppl_change_vs_base"].idxmin()]
    return [f"Largest gain: {best['memory_size']} changes test perplexity by {100 * best['ppl_change_vs_base']:+.1f}% "
            f"against the base alone (the paper: {100 * PAPER_GAIN:+.0f}% on GPT2-large with a 774M memory trained "
            "on GPT2-xl's targets, WikiText-103)."]


SAME = ("decoder_fingerprint", "token_store_fingerprint")  # one base on one token store
REFERENCE = ("decoder", "knn_lm")  # scored once per run: one row per split is kept
RTOL = 1e-4  # how far two runs' scores of the same reference may differ (bf16 on two machines) and still be one


def read_results(paths: list[Path], same_targets: list[str] | None = None) -> pd.DataFrame:
    """The results of one run on one base, from one file or several (sizes finished in different sessions).

    Why the checks: a memory's gain is read against the base and kNN-LM rows, and the memories of one fit must have
    imitated the same targets. Files of another base or token store, memories trained on other targets (a datastore
    rebuilt to other bytes), or reference scores that differ beyond ``RTOL`` are refused; a memory size present
    twice is refused too (which one would count?). The reference rows of the first file are kept.

    ``same_targets``: targets fingerprints the caller declares to be one set of targets, read as the first of them.
    The fingerprint hashes the targets' identity as well as their bytes, so the same bytes under an identity that
    gained a label (the search revision, 91b4c8b) get another fingerprint; the declaration is the caller's, and
    ``write_summary`` prints it."""
    frames = [pd.read_csv(p).assign(_file=str(p)) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    if same_targets and "targets_fingerprint" in df:
        df["targets_fingerprint"] = df["targets_fingerprint"].replace({fp: same_targets[0] for fp in same_targets})
    mem = df[~df["arch"].isin(REFERENCE)]
    for column, rows in [*((c, df) for c in SAME), ("targets_fingerprint", mem)]:
        if column in rows and rows[column].nunique(dropna=True) > 1:
            raise UserError(f"{', '.join(map(str, paths))} are not one run: they differ in {column} "
                            f"({', '.join(sorted(map(str, rows[column].dropna().unique())))}); summarise each alone")
    twice = mem.groupby(["arch", "memory_size", "split"])["_file"].nunique()
    if (twice > 1).any():
        arch, size, _ = twice[twice > 1].index[0]
        raise UserError(f"{arch} {size} is in several of {', '.join(map(str, paths))}: keep it in one file")
    ref = df[df["arch"].isin(REFERENCE)]
    spread = ref.groupby(["arch", "split"])["loss"].agg(lambda x: float(x.max() - x.min()) / max(abs(x.min()), 1e-12))
    if (spread > RTOL).any():
        arch, split = spread[spread > RTOL].index[0]
        raise UserError(f"the {arch} {split} loss differs between {', '.join(map(str, paths))} by more than "
                        f"{RTOL:g} relative: not one run; summarise each alone")
    keep = ~df["arch"].isin(REFERENCE) | ~df.duplicated(["arch", "split"])
    return df[keep].drop(columns="_file").reset_index(drop=True)


def write_summary(results: Path | list[Path], times: Path | None, out: Path, bootstrap: int = 1000,
                  trials: Path | None = None, same_targets: list[str] | None = None) -> Path:
    from mlpmem_lightning.study.report.memory_scaling import plot_memory_scaling

    df = read_results(results if isinstance(results, list) else [results], same_targets)
    result = memory_scaling(df, split="test", bootstrap=bootstrap)
    plot_memory_scaling(result, out / "memory_scaling.png")
    lines = [f"# Memory-size scaling on {result['base']}", "", "## Perplexity (λ, T chosen on valid)", "",
             *valid_table(df), "", "## Fit (test)", "", *summary_lines(result), "", *span_line(df), "",
             *gain_lines(result)]
    if same_targets:
        lines += ["", f"Targets fingerprints {', '.join(same_targets)} were declared one set of targets "
                      "(`--same-targets`), not checked: the results files differ in them."]
    if times is not None and times.is_file():
        lines += ["", "## Seconds per command", "", *times_table(pd.read_csv(times))]
    if trials is not None and trials.is_file():
        lines += ["", "## Seconds per stage of each trial", "", *trials_table(pd.read_csv(trials))]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, nargs="+", required=True, help="results.csv of one run (several: "
                    "its sizes from several sessions, refused unless one base, token store and targets)")
    ap.add_argument("--times", type=Path, help="the script's times.csv: stage,seconds,exit,utc")
    ap.add_argument("--trials", type=Path, help="the sweep's trials.csv: time_<stage>_s per trial")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--same-targets", nargs="+", metavar="FINGERPRINT", help="targets fingerprints to read as one "
                    "set of targets (the same bytes under another identity); summary.md says so")
    args = ap.parse_args(argv)
    try:
        print(write_summary(args.results, args.times, args.out, args.bootstrap, args.trials,
                            args.same_targets).read_text())
    except UserError as err:
        sys.exit(f"mlpmem: error: {err}")


if __name__ == "__main__":
    main()
