"""``report.md``: what was run, conclusions, fits, matched comparisons, imitation gaps and λ, as markdown.

The numbers come from :mod:`mlpmem_lightning.study.analysis`; labels and the baseline from the architecture
registry. The one-line conclusions are generated from the same tables by fixed rules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlpmem_lightning.study import analysis as an
from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.architectures import Architecture, style
from mlpmem_lightning.study.report.conclusions import conclusions
from mlpmem_lightning.study.report.plots import AXIS_LABELS, LAMBDA_PLOT, PLOTS, fmt_x, gap_plot_name
from mlpmem_lightning.study.report.sections import (
    data_notes,
    frontier_section,
    isoflop_section,
    methods,
    ordering_conclusion,
    ordering_section,
    own_decoder_conclusion,
    own_decoder_section,
    runs_section,
)
from mlpmem_lightning.study.report.text import FEW_SIZES, capital, imitators, md_table
from mlpmem_lightning.study.report.text import base_label as _base
from mlpmem_lightning.study.report.text import ci as _ci
from mlpmem_lightning.study.report.text import delta as _delta
from mlpmem_lightning.study.report.text import g as _g


def render_markdown(df: pd.DataFrame, fits: dict, source: Path, split: str, bootstrap: int,
                    raw_rows: int | None = None) -> str:
    """The whole report.md: what was run, conclusions, fits, matched comparisons, gap, λ, plots."""
    matched, axes = an.matched_comparison(df, fits, split), an.comparison_axes(df)
    gap, own = an.imitation_gaps(df, split), an.own_decoder_gains(df, split)
    best = an.best_lambdas(df)
    parts = [
        f"# Scaling report: {', '.join(sorted(df['study'].unique()))}",
        f"Source: `{source}`. Fits and comparisons use the **{split}** split; λ was chosen on valid. "
        f"Loss is mean cross-entropy in nats/token; Δ < 0 means lower (better) than {_base()}.",
        "## What was run", what_was_run(df, raw_rows) + (f"\n\n{data_notes(df)}" if data_notes(df) else ""),
        "## Conclusions", "\n".join(f"- {c}" for c in [ordering_conclusion(df, split), own_decoder_conclusion(own),
                                                          *conclusions(fits, matched, gap, best, axes)] if c),
        "## Perplexity of every run", runs_section(df),
        f"## {capital(_base())} ordered by size", ordering_section(df, split),
        "## Power-law fits", fits_section(fits, bootstrap, axes),
        "## Matched parameters", matched_section(matched, "parameters", axes["parameters"]),
        "## Matched compute", matched_section(matched, "compute", axes["compute"]),
        "### Decoder-only compute frontier", frontier_section(df, matched, split),
        "## IsoFLOP view", isoflop_section(df, split),
        "## Against its own decoder", own_decoder_section(own, split),
    ]
    for arch in imitators():
        label, ref = arch.label, style(arch.imitates).label
        parts += [f"## {capital(label)} vs {ref}", gap_section(gap[gap["arch"] == arch.name], arch)]
    parts += ["## Interpolation weight λ", lambda_section(best), "## Methods", methods()]
    return "\n\n".join(parts) + "\n"


def what_was_run(df: pd.DataFrame, raw_rows: int | None) -> str:
    rows = []
    for arch in architectures.ranked(df["arch"]):
        a = df[df["arch"] == arch]
        if a.empty:
            continue
        tokens = ", ".join(fmt_x(t, "params_total") for t in sorted(a["train_tokens"].dropna().unique()))
        mems = [m for m in a.groupby("memory_size")["params_memory"].min().sort_values().index if m]
        splits = ", ".join(f"{s}: {(a['split'] == s).sum()}" for s in sorted(a["split"].unique()))
        rows.append([style(arch).label, splits,
                     ", ".join(_ordered_sizes(a)), ", ".join(mems) or "—",
                     ", ".join(str(s) for s in sorted(a["seed"].unique())), tokens,
                     _range(a, "params_total"), _range(a, "flops_train_total")])
    table = md_table(["architecture", "rows per split", "decoder sizes", "memory sizes", "seeds", "train tokens",
                      "parameters", "training FLOPs"], rows)
    studies = ", ".join(f"`{s}` ({n} rows)" for s, n in df["study"].value_counts().sort_index().items())
    note = ""
    if raw_rows is not None and raw_rows > len(df):
        note = (f"\n\n{raw_rows - len(df)} repeated rows of the same model (same study, arch, sizes, seed and split, "
                "e.g. a decoder shared by several memories) were counted once.")
    return (f"Studies: {studies}. Train tokens count everything the architecture was trained on "
            f"(decoder + memory for decoder+memory).\n\n{table}{note}")


def _range(rows: pd.DataFrame, axis: str) -> str:
    return f"{fmt_x(rows[axis].min(), axis)}–{fmt_x(rows[axis].max(), axis)}"


def _ordered_sizes(rows: pd.DataFrame) -> list[str]:
    """Decoder sizes from smallest to largest decoder."""
    return list(rows.groupby("decoder_size")["params_decoder"].min().sort_values().index)


def fits_section(fits: dict, bootstrap: int, axes: dict[str, str] | None = None) -> str:
    plots = [(f"loss vs {AXIS_LABELS[a]}", PLOTS[a]) for a in an.X_AXES
             if a != "params_non_embedding" or (axes or {}).get("parameters") == a]
    if getattr(fits, "unfitted", None):
        return (f"*Not fitted: {fits.unfitted}. The tables above and the λ and gap plots below do not need a fit.*"
                "\n\n" + "\n\n".join(f"![{alt}]({name})" for alt, name in plots))
    table = an.fits_table(fits)
    rows = [[style(r.arch).label, AXIS_LABELS[r.x_axis], r.n, r.n_x, _ci(r.E, (r.E_lo, r.E_hi)),
             _ci(r.A, (r.A_lo, r.A_hi)), _alpha_cell(r)] for r in table.itertuples()]
    text = [f"L(x) = E + A·x^(−α), fitted to the loss of every run (seeds are separate points) by minimising a "
            f"Huber loss (δ = {an.HUBER_DELTA:g}) on log-residuals with L-BFGS-B from a grid of starting points "
            f"(Hoffmann et al. 2022, approach 3). Intervals: 95% percentile bootstrap over runs ({bootstrap} "
            "resamples). The same numbers are in `fits.json`.",
            md_table(["architecture", "x", "runs", "sizes", "E [95%]", "A [95%]", "α [95%]"], rows)]
    text += _fit_caveats(table)
    for (arch, axis), why in fits.skipped.items():
        text.append(f"*{style(arch).label} vs {AXIS_LABELS[axis]} not fitted: {why}.*")
    diffs = an.exponent_differences(fits)
    if not diffs.empty:
        rows = [[style(r.arch).label, AXIS_LABELS[r.x_axis], f"{r.alpha:.3f}", f"{r.decoder_alpha:.3f}",
                 _delta(r.diff, r.diff_lo, r.diff_hi) if r.identified else "not identified"]
                for r in diffs.itertuples()]
        text += [f"Exponent against {_base()} (bootstrap interval of the difference):",
                 md_table(["architecture", "x", "α", f"α {_base()}", "Δα [95%]"], rows)]
    text += [f"![{alt}]({name})" for alt, name in plots]
    return "\n\n".join(text)


def _alpha_cell(r) -> str:
    """α [95%], or "not identified" (with the interval, which shows the bound it reaches) when the data do not
    pin it down; "(no interval)" when every resample gave the same fit."""
    if not r.alpha_identified:
        return f"not identified ({_ci(r.alpha, (r.alpha_lo, r.alpha_hi))})"
    return _ci(r.alpha, (r.alpha_lo, r.alpha_hi)) + (" (no interval)" if r.ci_degenerate else "")


def _fit_caveats(table: pd.DataFrame) -> list[str]:
    """Say so where the numbers mean less than they seem to."""
    notes = []
    few = table[table["n_x"] < FEW_SIZES]
    if not few.empty:
        notes.append(f"*Fits on fewer than {FEW_SIZES} sizes ({', '.join(_fit_names(few))}): three parameters from so "
                     "few sizes; the bootstrap interval understates the uncertainty (with 3 sizes and one run each "
                     "it collapses to a point).*")
    floor = table[table["E"] < 1e-3]
    if not floor.empty:
        notes.append(f"*E ≈ 0 ({', '.join(_fit_names(floor))}): the fit sits at E's lower bound, i.e. these losses "
                     "are fitted by a pure power law with no irreducible term.*")
    return notes


def _fit_names(rows: pd.DataFrame) -> list[str]:
    return [f"{style(r.arch).label} vs {AXIS_LABELS[r.x_axis]}" for r in rows.itertuples()]


def matched_section(matched: pd.DataFrame, comparison: str, axis: str) -> str:
    fit = matched[(matched["comparison"] == comparison) & (matched["method"] == "fit")]
    direct = matched[(matched["comparison"] == comparison) & (matched["method"] == "direct")]
    parts = ["### On the fitted curves", _fitted_table(fit, axis)]
    if comparison == "parameters":  # measured runs at matched compute: against the frontier (its own section)
        parts += ["### Measured pairs", _direct_table(direct, comparison, axis)]
    return "\n\n".join(parts)


def _fitted_table(fit: pd.DataFrame, axis: str) -> str:
    if fit.empty:
        return f"*No fitted architecture besides {_base()} on this axis.*"
    archs = [a for a in an.compared(fit) if (fit["arch"] == a).any()]
    labels = [style(a).label for a in archs]
    headers = [AXIS_LABELS[axis], _base()] + [h for a in labels for h in (a, f"Δ {a} [95%]")]
    rows = []
    for x, at_x in fit.groupby("x"):
        row = [fmt_x(x, axis), _g(at_x["decoder_loss"].iloc[0])]
        for a in archs:
            r = at_x[at_x["arch"] == a]
            if r.empty:
                row += ["—", "—"]
                continue
            r = r.iloc[0]
            mark = " †" if r["extrapolated"] else ""
            row += [_g(r["loss"]), _delta(r["delta"], r["delta_lo"], r["delta_hi"]) + mark]
        rows.append(row)
    return (f"Predicted {AXIS_LABELS[axis]}-matched loss at every x observed for any architecture. "
            "†: x lies outside the range one of the two fits was made on (extrapolated).\n\n"
            + md_table(headers, rows))


def _direct_table(direct: pd.DataFrame, comparison: str, axis: str) -> str:
    if direct.empty:
        return (f"*No measured pairs: no {_base()} run of the same study has the same parameter count (within 1%) "
                "as another architecture's run.*" if comparison == "parameters" else
                f"*No measured pairs: no {_base()} runs in the same study.*")
    order = architectures.ranked(direct["arch"]).index
    direct = direct.assign(order=direct["arch"].map(order)).sort_values(["order", "x"])
    rows = [[style(r.arch).label, r.study, r.decoder_size, r.memory_size or "—", fmt_x(r.x, axis),
             f"{fmt_x(r.decoder_x, axis)} (×{r.x_ratio:.2f})", f"{r.loss:.4f}", f"{r.decoder_loss:.4f}",
             f"{r.delta:+.4f}", int(r.n_seeds)] for r in direct.itertuples()]
    rule = (f"{_base()} run of the same study with equal params_total (within 1%)" if comparison == "parameters"
            else f"{_base()} run of the same study nearest in log training FLOPs")
    return (f"Measured losses (mean over seeds), each paired with the {rule}; ×r is the architecture's x over its "
            "partner's.\n\n" + md_table(["architecture", "study", "decoder", "memory", AXIS_LABELS[axis],
                                         f"{_base()} partner", "loss", f"{_base()} loss", "Δ", "seeds"], rows))


def gap_section(gap: pd.DataFrame, arch: Architecture) -> str:
    a, r, plot = arch.label, style(arch.imitates).label, gap_plot_name(arch)
    if gap.empty:
        return f"*No {a} and {r} runs on the same decoder.*\n\n![gap]({plot})"
    rows = [[g.study, g.decoder_size, g.memory_size or "—", g.seed, fmt_x(g.params_total, "params_total"),
             f"{g.loss:.4f}", f"{g.reference_loss:.4f}", f"{g.gap:+.4f}"] for g in gap.itertuples()]
    return (f"{capital(a)} is trained to imitate the {r} on its own decoder; the gap says how much of the "
            f"{r} it recovers (negative: {a} is better).\n\n"
            + md_table(["study", "decoder", "memory", "seed", "parameters (total)", f"{a} loss", f"{r} loss", "gap"],
                       rows) + f"\n\n![{a} minus {r}]({plot})")


def lambda_section(best: pd.DataFrame) -> str:
    if best.empty:
        mixers = " or ".join(a.label for a in architectures.registered() if not a.baseline)
        return f"*No {mixers} valid rows.*\n\n![λ curves]({LAMBDA_PLOT})"
    rows = [[style(r.arch).label, r.decoder_size, r.memory_size or "—", r.n_seeds, _g(r.chosen_lambda, 3),
             _g(r.best_lambda, 3), _g(r.best_ppl), _g(r.ppl_lambda_0),
             _g(r.ppl_lambda_0 - r.best_ppl, 3) if np.isfinite(r.best_ppl) else "—"] for r in best.itertuples()]
    return ("λ chosen on valid as recorded in the results (mean over seeds), and the λ minimising the seed-mean valid "
            "perplexity over the evaluated grid.\n\n"
            + md_table(["architecture", "decoder", "memory", "seeds", "λ chosen", "best λ (seed mean)",
                        "valid ppl at best λ", "valid ppl at λ=0", "ppl gain"], rows)
            + f"\n\n![valid perplexity vs λ]({LAMBDA_PLOT})")

