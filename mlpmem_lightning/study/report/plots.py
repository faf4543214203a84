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

AXIS_LABELS = {"params_total": "parameters (total)", "flops_train_total": "training compute (FLOPs)"}
PLOTS = {"params_total": "loss_vs_params.png", "flops_train_total": "loss_vs_flops.png"}
LAMBDA_PLOT = "lambda_curves.png"


def gap_plot_name(arch: architectures.Architecture) -> str:
    """``gap_memory_vs_knn.png``: the file of an architecture's gap to the one it imitates."""
    return f"gap_{arch.short or arch.name}_vs_{style(arch.imitates).short or arch.imitates}.png"


def plot_loss(df: pd.DataFrame, fits: dict, axis: str, split: str = "test") -> Figure:
    """Loss against one x-axis: runs as points, fits as lines with their 95% bootstrap band.

    Each fit is solid over the sizes it was fitted on and dashed where it is extended to the other
    architectures' sizes, so extrapolated comparisons look extrapolated.
    """
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    df = an.clean(df)
    archs = architectures.ranked(df["arch"])
    all_x = np.concatenate([an.points(df, a, axis, split)[axis].to_numpy(float) for a in archs])
    for arch in archs:
        pts = an.points(df, arch, axis, split)
        if pts.empty:
            continue
        fit, look = fits.get(arch, {}).get(axis), style(arch)
        label = None if fit else f"{look.label} (not fitted: fewer than 3 sizes)"
        ax.scatter(pts[axis], pts["loss"], color=look.colour, marker=look.marker, s=24, alpha=0.85, zorder=3,
                   label=label)
        if fit:
            _draw_fit(ax, fit, arch, all_x.min(), all_x.max())
    log_x_axis(ax, axis)
    ax.set_xlabel(AXIS_LABELS[axis])
    ax.set_ylabel(f"{split} loss (nats/token)")
    ax.set_title(f"{split} loss vs {AXIS_LABELS[axis]}\nlines: fits L(x) = E + A·x^(−α), dashed where extrapolated\n"
                 "bands: 95% bootstrap; points: runs (one per seed)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    return fig


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


def _draw_fit(ax, fit: dict, arch: str, x_lo: float, x_hi: float) -> None:
    look, (alo, ahi) = style(arch), fit["alpha_ci"]
    colour = look.colour
    own = np.geomspace(fit["x_min"], fit["x_max"], 200)
    if fit["n_bootstrap"]:
        lo, hi = an.band(fit, own)
        ax.fill_between(own, lo, hi, color=colour, alpha=0.18, lw=0)
    ax.plot(own, an.predict(fit, own), color=colour, lw=2,
            label=f"{look.label}: α = {fit['alpha']:.3f} [{alo:.3f}, {ahi:.3f}]")
    for a, b in ((x_lo, fit["x_min"]), (fit["x_max"], x_hi)):
        if b > a:
            ext = np.geomspace(a, b, 50)
            ax.plot(ext, an.predict(fit, ext), color=colour, lw=1.2, ls="--")


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
    fig.suptitle("valid perplexity vs interpolation weight λ (λ = 0: the decoder alone; ● best λ)", fontsize=11)
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
    ax.set_title(style(arch).label)
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
        look = style(name)
        ax.scatter(rows["params_total"], rows["gap"], color=look.colour, marker=look.marker, s=24, alpha=0.7,
                   label=f"{look.label}: one decoder and seed")
        mean = rows.groupby(["study", "decoder_size", "memory_size", "params_total"], as_index=False)["gap"].mean()
        mean = mean.sort_values("params_total")
        ax.plot(mean["params_total"], mean["gap"], color=look.colour, lw=2, label=f"{look.label}: mean over seeds")
    if not gap.empty:
        log_x_axis(ax, "params_total")
        ax.legend(fontsize=9)
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel(f"loss({a}) − loss({r})\n(nats/token)")
    ax.set_title(f"{a} vs the {r} it imitates (same decoder; below 0: {a} better)", fontsize=10)
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
