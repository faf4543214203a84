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
from mlpmem_lightning.study.report.plots import AXIS_LABELS, LAMBDA_PLOT, PLOTS, fmt_x, gap_plot_name

WHAT = {"parameters": "parameter count", "compute": "compute"}
FEW_SIZES = 5  # below this many distinct x a fit's bootstrap interval is flagged as unreliable


def _base() -> str:
    """The baseline's label: every Δ is against it."""
    return architectures.baseline().label


def imitators() -> list[Architecture]:
    """Registered architectures trained to imitate another (decoder+memory imitates the kNN-LM)."""
    return [a for a in architectures.registered() if a.imitates is not None]


def _g(v: float, digits: int = 4) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def _ci(v: float, ci: tuple[float, float], digits: int = 4) -> str:
    return f"{_g(v, digits)} [{_g(ci[0], digits)}, {_g(ci[1], digits)}]"


def _delta(v: float, lo: float, hi: float) -> str:
    if not np.isfinite(v):
        return "—"
    return f"{v:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "")


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(df: pd.DataFrame, fits: dict, source: Path, split: str, bootstrap: int,
                    raw_rows: int | None = None) -> str:
    """The whole report.md: what was run, conclusions, fits, matched comparisons, gap, λ, plots."""
    matched = an.matched_comparison(df, fits, split)
    gap = an.imitation_gaps(df, split)
    best = an.best_lambdas(df)
    parts = [
        f"# Scaling report: {', '.join(sorted(df['study'].unique()))}",
        f"Source: `{source}`. Fits and comparisons use the **{split}** split; λ was chosen on valid. "
        f"Loss is mean cross-entropy in nats/token; Δ < 0 means lower (better) than {_base()}.",
        "## What was run", what_was_run(df, raw_rows),
        "## Conclusions", "\n".join(f"- {c}" for c in conclusions(fits, matched, gap, best)),
        "## Power-law fits", fits_section(fits, bootstrap),
        "## Matched parameters", matched_section(matched, "parameters", "params_total"),
        "## Matched compute", matched_section(matched, "compute", "flops_train_total"),
    ]
    for arch in imitators():
        label, ref = arch.label, style(arch.imitates).label
        parts += [f"## {label[:1].upper() + label[1:]} vs {ref}", gap_section(gap[gap["arch"] == arch.name], arch)]
    parts += ["## Interpolation weight λ", lambda_section(best), "## Definitions", DEFINITIONS]
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


def fits_section(fits: dict, bootstrap: int) -> str:
    table = an.fits_table(fits)
    rows = [[style(r.arch).label, AXIS_LABELS[r.x_axis], r.n, r.n_x, _ci(r.E, (r.E_lo, r.E_hi)),
             _ci(r.A, (r.A_lo, r.A_hi)), _ci(r.alpha, (r.alpha_lo, r.alpha_hi))] for r in table.itertuples()]
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
                 _delta(r.diff, r.diff_lo, r.diff_hi)] for r in diffs.itertuples()]
        text += [f"Exponent against {_base()} (bootstrap interval of the difference):",
                 md_table(["architecture", "x", "α", f"α {_base()}", "Δα [95%]"], rows)]
    text += [f"![{alt}]({name})" for alt, name in
             (("loss vs parameters", PLOTS["params_total"]), ("loss vs compute", PLOTS["flops_train_total"]))]
    return "\n\n".join(text)


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
    return "\n\n".join(["### On the fitted curves", _fitted_table(fit, axis),
                        "### Measured pairs", _direct_table(direct, comparison, axis)])


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
    return (f"{a[:1].upper() + a[1:]} is trained to imitate the {r} on its own decoder; the gap says how much of the "
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


DEFINITIONS = """\
- **Parameters** (`params_total`): decoder + memory for decoder+memory; the kNN-LM's datastore is data, not parameters,
  so a kNN-LM has its decoder's count.
- **Training compute** (`flops_train_total`): everything spent to produce the architecture: decoder training, the
  datastore pass, the neighbour search for the targets and the memory's training, as recorded in the results.
- **Fitted comparison**: both fitted curves read off at the same x, for every x observed on that axis; Δ = loss(arch)
  − loss(decoder-only), its interval the percentile interval of the difference over the two sets of bootstrap fits.
- **Measured pairs**: losses averaged over seeds per (study, architecture, decoder size, memory size). At matched
  parameters a run is paired with the decoder-only run of the same study whose parameter count is equal within 1%
  (typically a kNN-LM and its own decoder); runs without such a partner are not listed. At matched compute it is
  paired with the decoder-only run of the same study nearest in log FLOPs; ×r says how far from equal that is.
- **One-line conclusions** are generated from the tables above by fixed rules (counting signs of Δ inside the fitted
  range, whether intervals exclude 0), not written by hand."""


# ----------------------------------------------------------------------------------------------
# conclusions
# ----------------------------------------------------------------------------------------------

def conclusions(fits: dict, matched: pd.DataFrame, gap: pd.DataFrame, best: pd.DataFrame) -> list[str]:
    """One-line statements that are true of the numbers in the tables, by construction."""
    lines = [f"{style(a).label} vs {AXIS_LABELS[x]}: not fitted ({why})." for (a, x), why in fits.skipped.items()]
    for comparison in ("parameters", "compute"):
        for arch in an.compared(matched):
            lines += [c for c in (_fitted_conclusion(matched, arch, comparison),
                                  _direct_conclusion(matched, arch, comparison)) if c]
    diffs = an.exponent_differences(fits)
    lines += [_exponent_conclusion(r) for r in diffs.itertuples()]
    for arch, rows in gap.groupby("arch", sort=False):
        below, ref = int((rows["gap"] < 0).sum()), style(rows["reference"].iloc[0]).label
        lines.append(f"{style(arch).label} is below the {ref} on the same decoder in {below} of {len(rows)} runs "
                     f"(mean gap {rows['gap'].mean():+.3f} nats/token).")
    lines += _lambda_conclusions(best)
    if matched.empty:
        lines += [f"Only {style(a).label} could be fitted: α = {_ci(f['alpha'], f['alpha_ci'], 3)} vs "
                  f"{AXIS_LABELS[x]}; there is nothing to compare it with."
                  for a, by_axis in fits.items() for x, f in by_axis.items()]
    return lines


def _fitted_conclusion(matched: pd.DataFrame, arch: str, comparison: str) -> str | None:
    rows = matched[(matched["method"] == "fit") & (matched["arch"] == arch) & (matched["comparison"] == comparison)]
    rows = rows[np.isfinite(rows["delta"].astype(float))]
    if rows.empty:
        return None
    inside, what = rows[~rows["extrapolated"].astype(bool)], WHAT[comparison]
    if inside.empty:
        return (f"{style(arch).label} vs {_base()} at matched {what}: the two fits share no observed x, so every "
                "fitted comparison is an extrapolation (see the table).")
    n, lower = len(inside), int((inside["delta"] < 0).sum())
    sure = int(((inside["delta_hi"] < 0) | (inside["delta_lo"] > 0)).sum())
    if lower == n:
        head = f"{style(arch).label} is lower than {_base()} at every matched {what}"
    elif lower == 0:
        head = f"{style(arch).label} is higher than {_base()} at every matched {what}"
    else:
        head = f"{style(arch).label} is lower than {_base()} at {lower} of {n} matched values of {what}"
    axis = an.COMPARISONS[comparison]
    return (f"{head} inside both fitted ranges (fitted curves, {n} points from {fmt_x(inside['x'].min(), axis)} to "
            f"{fmt_x(inside['x'].max(), axis)}; Δ {_span(inside['delta'], '+.3f')} nats/token; the 95% interval "
            f"excludes 0 at {sure} of {n}).")


def _span(values: pd.Series, spec: str) -> str:
    """"a to b", or just "a" when all values agree at the printed precision."""
    lo, hi = format(values.min(), spec), format(values.max(), spec)
    return lo if lo == hi else f"{lo} to {hi}"


def _direct_conclusion(matched: pd.DataFrame, arch: str, comparison: str) -> str | None:
    rows = matched[(matched["method"] == "direct") & (matched["arch"] == arch) &
                   (matched["comparison"] == comparison)]
    if rows.empty:
        return None
    lower, ratio = int((rows["delta"] < 0).sum()), rows["x_ratio"]
    how = ("equal parameters" if comparison == "parameters" else
           f"the nearest compute (its compute {_span(ratio, '.2f')}× its partner's)")
    return (f"Measured at {how}: {style(arch).label} is lower than {_base()} in {lower} of {len(rows)} pairs "
            f"(mean Δ {rows['delta'].mean():+.3f} nats/token).")


def _exponent_conclusion(r) -> str:
    if r.diff_lo > 0:
        verdict = f"steeper than {_base()} (the interval of the difference lies above 0)"
    elif r.diff_hi < 0:
        verdict = f"shallower than {_base()} (the interval of the difference lies below 0)"
    else:
        verdict = f"not distinguishable from {_base()}'s at 95% (the interval of the difference contains 0)"
    return (f"Exponent vs {AXIS_LABELS[r.x_axis]}: {style(r.arch).label} α = {r.alpha:.3f}, {_base()} "
            f"{r.decoder_alpha:.3f}, Δα {_delta(r.diff, r.diff_lo, r.diff_hi)}: {verdict}.")


def _lambda_conclusions(best: pd.DataFrame) -> list[str]:
    lines = []
    for arch in an.compared(best):
        b = best[best["arch"] == arch]
        col = "best_lambda" if b["best_lambda"].notna().any() else "chosen_lambda"
        vals = b[col].dropna()
        if vals.empty:
            continue
        what = "best λ on valid (seed-mean curves)" if col == "best_lambda" else "λ chosen on valid"
        span = f"{vals.min():.2f}" if vals.min() == vals.max() else f"{vals.min():.2f}–{vals.max():.2f}"
        lines.append(f"{style(arch).label}: {what} is {span} across {len(vals)} sizes.")
    return lines
