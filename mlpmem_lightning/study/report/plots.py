"""The report's figures: loss against parameters and compute with the fits, λ curves, and imitation gaps.

Built with matplotlib's object API (``Figure``, no pyplot), so they also work inside a notebook whatever its
backend. Labels, colours and markers come from the architecture registry.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mlpmem_lightning.study import analysis as an
from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.architectures import style

AXIS_LABELS = {"params_non_embedding": "non-embedding parameters", "params_total": "parameters (total)",
               "flops_train_total": "training compute (FLOPs)"}
PLOTS = {"params_non_embedding": "loss_vs_params.png", "params_total": "loss_vs_params_total.png",
         "flops_train_total": "loss_vs_flops.png"}
LAMBDA_PLOT = "lambda_curves.png"
ISOFLOP_PLOT = "isoflop.png"
# Architectures a results table may hold without this process registering them: a fixed look all the same, so
# that a figure never changes colour with the set of plugins loaded (registered ones use the registry's).
EXTRA_STYLES = {"mlp_memory_ce": ("decoder+memory (CE only)", "tab:purple", "D")}
SHORT_TITLES = {"params_non_embedding": "Loss vs non-embedding parameters", "params_total": "Loss vs total parameters",
                "flops_train_total": "Loss vs training compute"}


def look(arch: str) -> tuple[str, str, str]:
    """(label, colour, marker) of an architecture: the registry's, else ``EXTRA_STYLES``', else grey crosses."""
    if arch not in architectures.names() and arch in EXTRA_STYLES:
        return EXTRA_STYLES[arch]
    s = style(arch)
    return s.label, s.colour, s.marker


def gap_plot_name(arch: architectures.Architecture) -> str:
    """``gap_memory_vs_knn.png``: the file of an architecture's gap to the one it imitates."""
    return f"gap_{arch.short or arch.name}_vs_{style(arch.imitates).short or arch.imitates}.png"


def alpha_label(fit: dict) -> str:
    """α for a legend: with its interval only when the data identify it (never the optimiser's bound)."""
    if not fit["alpha_identified"]:
        return "α not identified"
    if fit["ci_degenerate"]:
        return f"α = {fit['alpha']:.2f} (no interval)"
    lo, hi = fit["alpha_ci"]
    return f"α = {fit['alpha']:.2f} [{lo:.2f}, {hi:.2f}]"


def plot_loss(df: pd.DataFrame, fits: dict, axis: str, split: str = "test") -> Figure:
    """Loss against one x-axis: seed means with their spread (min–max over seeds), labelled by decoder size;
    each fit drawn over the range it was fitted on only, with its 95% bootstrap band. Runs a fit left out
    (smaller token budgets against parameters, decoder runs off the compute frontier) are hollow. On the
    compute axis the decoder-only frontier (the lower envelope over every size and budget) is drawn dotted."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    df = an.clean(df)
    for arch in architectures.ranked(df["arch"]):
        pts = an.points(df, arch, axis, split)
        if pts.empty:
            continue
        label, colour, marker = look(arch)
        fit = fits.get(arch, {}).get(axis)
        used = an.fit_points(df, arch, axis, split).index
        _seed_points(ax, pts.assign(_used=pts.index.isin(used)), axis, colour, marker)
        ax.plot([], [], color=colour, marker=marker, ls="-" if fit else "",
                label=f"{label}: {alpha_label(fit)}" if fit else f"{label} (not fitted)")
        if fit:
            _draw_fit(ax, fit, colour)
    if axis == "flops_train_total":
        _draw_frontier(ax, df, split)
    log_x_axis(ax, axis)
    ax.set_xlabel(AXIS_LABELS[axis])
    ax.set_ylabel(f"{split} loss (nats/token)")
    ax.set_title(SHORT_TITLES[axis], fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _seed_points(ax, pts: pd.DataFrame, axis: str, colour: str, marker: str) -> None:
    """Mean ± spread over seeds per (size, budget), labelled by decoder size."""
    keys = ["study", "decoder_size", "memory_size", "train_tokens", axis]
    means = pts.groupby(keys, as_index=False, dropna=False).agg(
        loss=("loss", "mean"), lo=("loss", "min"), hi=("loss", "max"), used=("_used", "any"))
    for used, rows in means.groupby("used"):
        err = np.vstack([rows["loss"] - rows["lo"], rows["hi"] - rows["loss"]])
        ax.errorbar(rows[axis], rows["loss"], yerr=err, fmt=marker, color=colour, ms=6, capsize=3, zorder=3,
                    mfc=colour if used else "none", lw=1)
    # one label per size and x: two studies' (or two budgets') points of one size sit at one x on a parameter axis
    labels = means.sort_values("used", ascending=False).drop_duplicates(["decoder_size", "memory_size", axis])
    for r in labels.itertuples(index=False):
        ax.annotate(str(r.decoder_size), (getattr(r, axis), r.loss), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color=colour)


def _draw_frontier(ax, df: pd.DataFrame, split: str) -> None:
    front = an.compute_frontier(df, split)
    for _, rows in front.groupby("study"):
        ax.plot(rows["flops_train_total"], rows["loss"], color="black", ls=":", lw=1.2, zorder=2)
    if not front.empty:
        ax.plot([], [], color="black", ls=":", label="decoder-only frontier")


def log_x_axis(ax, axis: str) -> None:
    """Log x with ticks at 1, 2, 5 × 10^k labelled 2M / 5e13: readable over one decade or five."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_tick(x, axis)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def fmt_tick(x: float, axis: str) -> str:
    if axis == "flops_train_total":
        mant, exp = f"{x:.0e}".split("e")
        return f"{mant}e{int(exp)}"
    return fmt_x(x, axis)


def _draw_fit(ax, fit: dict, colour: str) -> None:
    """The fitted curve and its band over the fitted range only: never extended to sizes it was not fitted on."""
    own = np.geomspace(fit["x_min"], fit["x_max"], 200)
    if fit["n_bootstrap"]:
        lo, hi = an.band(fit, own)
        ax.fill_between(own, lo, hi, color=colour, alpha=0.15, lw=0)
    ax.plot(own, an.predict(fit, own), color=colour, lw=1.8)


def plot_isoflop(groups: pd.DataFrame, axis: str = "params_non_embedding") -> Figure:
    """IsoFLOP view: decoder-only loss against parameters, one line per compute level (seed means ± spread),
    the lowest point of each level ringed: the best decoder size for that compute."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    if groups.empty:
        ax.text(0.5, 0.5, "no compute level holds two decoder sizes", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    levels = groups[["study", "level", "level_flops"]].drop_duplicates().sort_values("level_flops")
    colours = matplotlib.colormaps["plasma"](np.linspace(0, 0.85, len(levels)))
    for colour, lev in zip(colours, levels.itertuples(index=False)):
        rows = groups[(groups["study"] == lev.study) & (groups["level"] == lev.level)].sort_values(axis)
        err = np.vstack([rows["loss"] - rows["loss_min"], rows["loss_max"] - rows["loss"]])
        ax.errorbar(rows[axis], rows["loss"], yerr=err, fmt="o-", color=colour, capsize=3, ms=5,
                    label=f"≈{fmt_tick(lev.level_flops, 'flops_train_total')} FLOPs")
        best = rows.loc[rows["loss"].idxmin()]
        ax.plot(best[axis], best["loss"], "o", ms=11, mfc="none", mec=colour, mew=1.5)
        for p in rows.itertuples(index=False):
            ax.annotate(str(p.decoder_size), (getattr(p, axis), p.loss), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=colour)
    log_x_axis(ax, axis)
    ax.set_xlabel(f"{AXIS_LABELS[axis]} (decoder-only)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("IsoFLOP profiles", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="compute level")
    return fig


def plot_lambda_curves(curves: pd.DataFrame) -> Figure:
    """Valid perplexity against λ: a panel per architecture, a line per size (seed mean), best λ marked."""
    base = architectures.baseline().name
    archs = [a for a in architectures.ranked(curves["arch"]) if a != base and (curves["arch"] == a).any()]
    fig = Figure(figsize=(6 * max(len(archs), 1), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(archs), 1), sharey=True))
    if not archs:
        axes[0].text(0.5, 0.5, "no per-λ valid perplexities (ppl_lambda_* columns) in the results",
                     ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
        return fig
    for ax, arch in zip(axes, archs):
        _lambda_panel(ax, curves[curves["arch"] == arch], arch)
    axes[0].set_ylabel("valid perplexity (log scale)")
    fig.suptitle("Valid perplexity vs λ", fontsize=11)
    return fig


def _lambda_panel(ax, curves: pd.DataFrame, arch: str) -> None:
    keys = ["decoder_size", "memory_size"]
    mean = curves.groupby(keys + ["lambda"], as_index=False).agg(ppl=("ppl", "mean"), params=("params_total", "mean"))
    sizes = mean.groupby(keys, as_index=False)["params"].first().sort_values("params")
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(sizes)))
    for colour, (_, size) in zip(colours, sizes.iterrows()):
        line = mean[(mean["decoder_size"] == size["decoder_size"]) & (mean["memory_size"] == size["memory_size"])]
        label = size["decoder_size"] + (f" + {size['memory_size']}" if size["memory_size"] else "")
        ax.plot(line["lambda"], line["ppl"], color=colour, marker=".", label=label)
        best = line.loc[line["ppl"].idxmin()]
        ax.plot(best["lambda"], best["ppl"], "o", color=colour, ms=8, mec="black")
    ax.set_yscale("log")
    ax.set_xlabel(f"λ (weight of the {style(arch).weighs or arch})")
    ax.set_title(look(arch)[0])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="decoder (+ memory)", fontsize=8)


def plot_gap(gap: pd.DataFrame, arch: architectures.Architecture | None = None) -> Figure:
    """An architecture minus the one it imitates, on the same decoder (decoder+memory minus kNN-LM), against total
    parameters. ``arch``: the imitating architecture the figure is about (default: every one in ``gap``)."""
    if arch is not None:
        gap = gap[gap["arch"] == arch.name]
    pairs = [(style(a), style(r)) for a, r in gap[["arch", "reference"]].drop_duplicates().itertuples(index=False)]
    if arch is not None:
        pairs = [(arch, style(arch.imitates))]
    a, r = (pairs[0][0].label, pairs[0][1].label) if len(pairs) == 1 else ("arch", "imitated arch")
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="black", lw=1, ls="--")
    if gap.empty:
        ax.text(0.5, 0.6, f"no {a} and {r} rows on the same decoder", ha="center", transform=ax.transAxes)
    for name, rows in gap.groupby("arch", sort=False):
        label, colour, marker = look(name)
        mean = rows.groupby(["study", "decoder_size", "memory_size", "params_total"], as_index=False).agg(
            gap=("gap", "mean"), lo=("gap", "min"), hi=("gap", "max")).sort_values("params_total")
        err = np.vstack([mean["gap"] - mean["lo"], mean["hi"] - mean["gap"]])
        ax.errorbar(mean["params_total"], mean["gap"], yerr=err, fmt=marker + "-", color=colour, capsize=3,
                    label=f"{label} (mean, min–max over seeds)")
        for p in mean.itertuples(index=False):
            ax.annotate(str(p.decoder_size), (p.params_total, p.gap), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=colour)
    if not gap.empty:
        log_x_axis(ax, "params_total")
        ax.legend(fontsize=9)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel(f"loss({a}) − loss({r})\n(nats/token)")
    ax.set_title(f"{a} − {r} (same decoder)", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    return fig


# ----------------------------------------------------------------------------------------------
# numbers on axes and in tables
# ----------------------------------------------------------------------------------------------

def fmt_x(x: float, axis: str) -> str:
    """1.26M parameters, 3.2e15 FLOPs: readable at a glance, exact numbers live in the CSV."""
    if not np.isfinite(x):
        return "—"
    if axis == "flops_train_total":
        mant, exp = f"{x:.2e}".split("e")
        return f"{mant}e{int(exp)}"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"
