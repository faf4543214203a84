"""report.md's one-line conclusions: generated from the analysis tables by fixed rules, never written by hand.

Claims that need statistics ("the interval excludes 0", "steeper", "shallower") are only made when every fit
involved is on at least ``MIN_SIZES_FOR_CLAIMS`` sizes with a bootstrap interval that has width
(:func:`mlpmem_lightning.study.analysis.claims_allowed`), and an α the data do not identify (its interval reaches
the fit's bound) is never quoted as a number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import analysis as an
from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.architectures import style
from mlpmem_lightning.study.report.plots import AXIS_LABELS, fmt_x
from mlpmem_lightning.study.report.text import WHAT, base_label, ci, delta, span

# ----------------------------------------------------------------------------------------------
# conclusions
# ----------------------------------------------------------------------------------------------

def conclusions(fits: dict, matched: pd.DataFrame, gap: pd.DataFrame, best: pd.DataFrame,
                axes: dict[str, str] | None = None) -> list[str]:
    """One-line statements that are true of the numbers in the tables, by construction.

    ``axes``: the x-axis of each comparison (:func:`analysis.comparison_axes`; default ``analysis.COMPARISONS``).
    """
    axes = axes or an.COMPARISONS
    lines = [f"No power-law fits: {fits.unfitted}."] if getattr(fits, "unfitted", None) else []
    lines += [f"{style(a).label} vs {AXIS_LABELS[x]}: not fitted ({why})." for (a, x), why in fits.skipped.items()]
    for comparison in ("parameters", "compute"):
        for arch in an.compared(matched):
            lines += [c for c in (_fitted_conclusion(matched, fits, arch, comparison, axes[comparison]),
                                  _direct_conclusion(matched, arch, comparison),
                                  _frontier_conclusion(matched, arch, comparison)) if c]
    diffs = an.exponent_differences(fits)
    lines += [_exponent_conclusion(r) for r in diffs.itertuples()]
    for arch, rows in gap.groupby("arch", sort=False):
        below, ref = int((rows["gap"] < 0).sum()), style(rows["reference"].iloc[0]).label
        lines.append(f"{style(arch).label} is below the {ref} on the same decoder in {below} of {len(rows)} runs "
                     f"(mean gap {rows['gap'].mean():+.3f} nats/token).")
    lines += _lambda_conclusions(best)
    if matched.empty:
        lines += [f"Only {style(a).label} could be fitted: {_alpha_text(f)} vs "
                  f"{AXIS_LABELS[x]}; there is nothing to compare it with."
                  for a, by_axis in fits.items() for x, f in by_axis.items()]
    return lines


def _alpha_text(fit: dict) -> str:
    """α with its interval, or why it is not quoted: an interval reaching the fit's bound is the bound's."""
    if not fit["alpha_identified"]:
        return f"α not identified (its 95% interval reaches the fit's bounds {list(an.ALPHA_BOUNDS)})"
    return f"α = {ci(fit['alpha'], fit['alpha_ci'], 3)}"


def _fitted_conclusion(matched: pd.DataFrame, fits: dict, arch: str, comparison: str, axis: str) -> str | None:
    rows = matched[(matched["method"] == "fit") & (matched["arch"] == arch) & (matched["comparison"] == comparison)]
    rows = rows[np.isfinite(rows["delta"].astype(float))]
    if rows.empty:
        return None
    inside, what = rows[~rows["extrapolated"].astype(bool)], WHAT[comparison]
    if inside.empty:
        return (f"{style(arch).label} vs {base_label()} at matched {what}: the two fits share no observed x, so every "
                "fitted comparison is an extrapolation (see the table).")
    n, lower = len(inside), int((inside["delta"] < 0).sum())
    pair = [fits.get(a, {}).get(axis) for a in (arch, architectures.baseline().name)]
    if all(pair) and an.claims_allowed(*pair):
        sure = int(((inside["delta_hi"] < 0) | (inside["delta_lo"] > 0)).sum())
        claim = f"the 95% interval excludes 0 at {sure} of {n}"
    else:
        claim = (f"no interval claim: a fit on fewer than {an.MIN_SIZES_FOR_CLAIMS} sizes, with a zero-width "
                 "bootstrap interval or an α not identified")
    if lower == n:
        head = f"{style(arch).label} is lower than {base_label()} at every matched {what}"
    elif lower == 0:
        head = f"{style(arch).label} is higher than {base_label()} at every matched {what}"
    else:
        head = f"{style(arch).label} is lower than {base_label()} at {lower} of {n} matched values of {what}"
    return (f"{head} inside both fitted ranges (fitted curves, {n} points from {fmt_x(inside['x'].min(), axis)} to "
            f"{fmt_x(inside['x'].max(), axis)}; Δ {span(inside['delta'], '+.3f')} nats/token; {claim}).")


def _method_rows(matched: pd.DataFrame, method: str, arch: str, comparison: str) -> pd.DataFrame:
    """The matched comparisons of one method (``direct``, ``frontier``) for one architecture and comparison."""
    return matched[(matched["method"] == method) & (matched["arch"] == arch) & (matched["comparison"] == comparison)]


def _direct_conclusion(matched: pd.DataFrame, arch: str, comparison: str) -> str | None:
    rows = _method_rows(matched, "direct", arch, comparison)
    if rows.empty:
        return None
    lower = int((rows["delta"] < 0).sum())
    return (f"Measured at equal parameters: {style(arch).label} is lower than {base_label()} in {lower} of "
            f"{len(rows)} pairs (mean Δ {rows['delta'].mean():+.3f} nats/token).")


def _frontier_conclusion(matched: pd.DataFrame, arch: str, comparison: str) -> str | None:
    rows = _method_rows(matched, "frontier", arch, comparison)
    if rows.empty:
        return None
    on, beyond = rows[~rows["extrapolated"].astype(bool)], rows[rows["extrapolated"].astype(bool)]
    text = f"Against the {base_label()} compute frontier (lower envelope over every size and budget): "
    if not on.empty:
        text += (f"{style(arch).label} is lower in {int((on['delta'] < 0).sum())} of {len(on)} runs within its range "
                 f"(mean Δ {on['delta'].mean():+.3f} nats/token)")
    else:
        text += f"no {style(arch).label} run lies within its range"
    if not beyond.empty:
        text += (f"; {len(beyond)} used more compute than any {base_label()} run (Δ {beyond['delta'].mean():+.3f} "
                 "on average, against the frontier's last point, which only bounds it from above)")
    return text + "."


def _exponent_conclusion(r) -> str:
    head = f"Exponent vs {AXIS_LABELS[r.x_axis]}: "
    if not r.identified:
        return (head + f"{style(r.arch).label} vs {base_label()}: not compared, an α is not identified (its 95% "
                "interval reaches the fit's bound).")
    if not r.claim:
        return (head + f"{style(r.arch).label} α = {r.alpha:.3f}, {base_label()} {r.decoder_alpha:.3f}: no steeper or "
                f"shallower claim (needs {an.MIN_SIZES_FOR_CLAIMS}+ sizes and bootstrap intervals with width).")
    if r.diff_lo > 0:
        verdict = f"steeper than {base_label()} (the interval of the difference lies above 0)"
    elif r.diff_hi < 0:
        verdict = f"shallower than {base_label()} (the interval of the difference lies below 0)"
    else:
        verdict = f"not distinguishable from {base_label()}'s at 95% (the interval of the difference contains 0)"
    return (head + f"{style(r.arch).label} α = {r.alpha:.3f}, {base_label()} "
            f"{r.decoder_alpha:.3f}, Δα {delta(r.diff, r.diff_lo, r.diff_hi)}: {verdict}.")


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
