"""`mlpmem report`: results.csv -> fits.json, plots and a report.md that stands on its own.

The numbers come from :mod:`.analysis`; this module only lays them out. Figures are built with
matplotlib's object API (``Figure``, no pyplot), so the plotting functions also work inside a
notebook whatever its backend; :func:`write_report` itself selects Agg, as a headless command should.
Every file is written to a temporary name and renamed, so an interrupted report never leaves a
half-written file behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mlpmem_lightning.core.artifacts import atomic_write_text, fsync_rename, tmp_path
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import analysis as an
from mlpmem_lightning.study.results import ARCHS, read_results

LABELS = {"decoder": "decoder-only", "knn_lm": "kNN-LM", "mlp_memory": "decoder+memory"}
COLOURS = {"decoder": "tab:blue", "knn_lm": "tab:orange", "mlp_memory": "tab:green"}
AXIS_LABELS = {"params_total": "parameters (total)", "flops_train_total": "training compute (FLOPs)"}
PLOTS = {"params_total": "loss_vs_params.png", "flops_train_total": "loss_vs_flops.png"}
LAMBDA_PLOT, GAP_PLOT = "lambda_curves.png", "gap_memory_vs_knn.png"
WHAT = {"parameters": "parameter count", "compute": "compute"}
FEW_SIZES = 5  # below this many distinct x a fit's bootstrap interval is flagged as unreliable


def write_report(results_csv: str | Path, out_dir: str | Path, *, split: str = "test", bootstrap: int = 1000,
                 seed: int = 0) -> Path:
    """Fit, plot and write ``fits.json``, the PNGs and ``report.md`` into ``out_dir``; the path of report.md."""
    matplotlib.use("Agg")
    raw = read_results(results_csv)
    df = an.clean(raw)
    if not (df["split"] == split).any():
        raise UserError(f"{results_csv} has no rows with split {split!r}: nothing to fit")
    fits = an.fit_all(df, split, bootstrap=bootstrap, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fits.json", json.dumps(_json_safe(an.fits_json(fits, split)), indent=2) + "\n")
    for axis, name in PLOTS.items():
        save_figure(plot_loss(df, fits, axis, split), out / name)
    save_figure(plot_lambda_curves(an.lambda_curves(df)), out / LAMBDA_PLOT)
    save_figure(plot_gap(an.memory_vs_knn(df, split)), out / GAP_PLOT)
    text = render_markdown(df, fits, Path(results_csv), split, bootstrap, raw_rows=len(raw))
    atomic_write_text(out / "report.md", text)
    return out / "report.md"


def _json_safe(obj):
    """NaN (an interval without bootstrap samples) as null: json.dumps would write invalid JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_figure(fig: Figure, path: Path) -> None:
    tmp = tmp_path(path)
    fig.savefig(tmp, format="png", dpi=150)
    fsync_rename(tmp, path)


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

def plot_loss(df: pd.DataFrame, fits: dict, axis: str, split: str = "test") -> Figure:
    """Loss against one x-axis: runs as points, fits as lines with their 95% bootstrap band.

    Each fit is solid over the sizes it was fitted on and dashed where it is extended to the other
    architectures' sizes, so extrapolated comparisons look extrapolated.
    """
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    df = an.clean(df)
    all_x = np.concatenate([an.points(df, a, axis, split)[axis].to_numpy(float) for a in ARCHS])
    for arch in ARCHS:
        pts = an.points(df, arch, axis, split)
        if pts.empty:
            continue
        fit = fits.get(arch, {}).get(axis)
        label = None if fit else f"{LABELS[arch]} (not fitted: fewer than 3 sizes)"
        ax.scatter(pts[axis], pts["loss"], color=COLOURS[arch], s=24, alpha=0.85, zorder=3, label=label)
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
    colour, (alo, ahi) = COLOURS[arch], fit["alpha_ci"]
    own = np.geomspace(fit["x_min"], fit["x_max"], 200)
    if fit["n_bootstrap"]:
        lo, hi = an.band(fit, own)
        ax.fill_between(own, lo, hi, color=colour, alpha=0.18, lw=0)
    ax.plot(own, an.predict(fit, own), color=colour, lw=2,
            label=f"{LABELS[arch]}: α = {fit['alpha']:.3f} [{alo:.3f}, {ahi:.3f}]")
    for a, b in ((x_lo, fit["x_min"]), (fit["x_max"], x_hi)):
        if b > a:
            ext = np.geomspace(a, b, 50)
            ax.plot(ext, an.predict(fit, ext), color=colour, lw=1.2, ls="--")


def plot_lambda_curves(curves: pd.DataFrame) -> Figure:
    """Valid perplexity against λ: a panel per architecture, a line per size (seed mean), best λ marked."""
    archs = [a for a in ARCHS[1:] if (curves["arch"] == a).any()]
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
    ax.set_xlabel("λ (weight of the " + ("kNN distribution" if arch == "knn_lm" else "memory") + ")")
    ax.set_title(LABELS[arch])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="decoder (+ memory)", fontsize=8)


def plot_gap(gap: pd.DataFrame) -> Figure:
    """Decoder+memory minus kNN-LM loss on the same decoder, against the memory model's parameters."""
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="black", lw=1, ls="--")
    if gap.empty:
        ax.text(0.5, 0.6, "no decoder+memory and kNN-LM rows on the same decoder", ha="center",
                transform=ax.transAxes)
    else:
        ax.scatter(gap["params_total"], gap["gap"], color=COLOURS["mlp_memory"], s=24, alpha=0.7,
                   label="one decoder and seed")
        mean = gap.groupby(["study", "decoder_size", "memory_size", "params_total"], as_index=False)["gap"].mean()
        mean = mean.sort_values("params_total")
        ax.plot(mean["params_total"], mean["gap"], color=COLOURS["mlp_memory"], lw=2, label="mean over seeds")
        log_x_axis(ax, "params_total")
        ax.legend(fontsize=9)
    ax.set_xlabel("parameters (total, decoder + memory)")
    ax.set_ylabel("loss(decoder+memory) − loss(kNN-LM)\n(nats/token)")
    ax.set_title("decoder+memory vs the kNN-LM it imitates (same decoder; below 0: memory better)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return fig


# ----------------------------------------------------------------------------------------------
# report.md
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
    gap = an.memory_vs_knn(df, split)
    best = an.best_lambdas(df)
    parts = [
        f"# Scaling report: {', '.join(sorted(df['study'].unique()))}",
        f"Source: `{source}`. Fits and comparisons use the **{split}** split; λ was chosen on valid. "
        "Loss is mean cross-entropy in nats/token; Δ < 0 means lower (better) than decoder-only.",
        "## What was run", what_was_run(df, raw_rows),
        "## Conclusions", "\n".join(f"- {c}" for c in conclusions(fits, matched, gap, best)),
        "## Power-law fits", fits_section(fits, bootstrap),
        "## Matched parameters", matched_section(matched, "parameters", "params_total"),
        "## Matched compute", matched_section(matched, "compute", "flops_train_total"),
        "## Decoder+memory vs kNN-LM", gap_section(gap),
        "## Interpolation weight λ", lambda_section(best),
        "## Definitions", DEFINITIONS,
    ]
    return "\n\n".join(parts) + "\n"


def what_was_run(df: pd.DataFrame, raw_rows: int | None) -> str:
    rows = []
    for arch in ARCHS:
        a = df[df["arch"] == arch]
        if a.empty:
            continue
        tokens = ", ".join(fmt_x(t, "params_total") for t in sorted(a["train_tokens"].dropna().unique()))
        mems = [m for m in a.groupby("memory_size")["params_memory"].min().sort_values().index if m]
        rows.append([LABELS[arch], ", ".join(f"{s}: {(a['split'] == s).sum()}" for s in sorted(a["split"].unique())),
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
    rows = [[LABELS[r.arch], AXIS_LABELS[r.x_axis], r.n, r.n_x, _ci(r.E, (r.E_lo, r.E_hi)),
             _ci(r.A, (r.A_lo, r.A_hi)), _ci(r.alpha, (r.alpha_lo, r.alpha_hi))] for r in table.itertuples()]
    text = [f"L(x) = E + A·x^(−α), fitted to the loss of every run (seeds are separate points) by minimising a "
            f"Huber loss (δ = {an.HUBER_DELTA:g}) on log-residuals with L-BFGS-B from a grid of starting points "
            f"(Hoffmann et al. 2022, approach 3). Intervals: 95% percentile bootstrap over runs ({bootstrap} "
            "resamples). The same numbers are in `fits.json`.",
            md_table(["architecture", "x", "runs", "sizes", "E [95%]", "A [95%]", "α [95%]"], rows)]
    text += _fit_caveats(table)
    for (arch, axis), why in fits.skipped.items():
        text.append(f"*{LABELS[arch]} vs {AXIS_LABELS[axis]} not fitted: {why}.*")
    diffs = an.exponent_differences(fits)
    if not diffs.empty:
        rows = [[LABELS[r.arch], AXIS_LABELS[r.x_axis], f"{r.alpha:.3f}", f"{r.decoder_alpha:.3f}",
                 _delta(r.diff, r.diff_lo, r.diff_hi)] for r in diffs.itertuples()]
        text += ["Exponent against decoder-only (bootstrap interval of the difference):",
                 md_table(["architecture", "x", "α", "α decoder-only", "Δα [95%]"], rows)]
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
    return [f"{LABELS[r.arch]} vs {AXIS_LABELS[r.x_axis]}" for r in rows.itertuples()]


def matched_section(matched: pd.DataFrame, comparison: str, axis: str) -> str:
    fit = matched[(matched["comparison"] == comparison) & (matched["method"] == "fit")]
    direct = matched[(matched["comparison"] == comparison) & (matched["method"] == "direct")]
    return "\n\n".join(["### On the fitted curves", _fitted_table(fit, axis),
                        "### Measured pairs", _direct_table(direct, comparison, axis)])


def _fitted_table(fit: pd.DataFrame, axis: str) -> str:
    if fit.empty:
        return "*No fitted architecture besides decoder-only on this axis.*"
    archs = [a for a in ARCHS[1:] if (fit["arch"] == a).any()]
    headers = [AXIS_LABELS[axis], "decoder-only"] + [h for a in archs for h in (LABELS[a], f"Δ {LABELS[a]} [95%]")]
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
        return ("*No measured pairs: no decoder-only run of the same study has the same parameter count (within 1%) "
                "as another architecture's run.*" if comparison == "parameters" else
                "*No measured pairs: no decoder-only runs in the same study.*")
    direct = direct.assign(order=direct["arch"].map(ARCHS.index)).sort_values(["order", "x"])
    rows = [[LABELS[r.arch], r.study, r.decoder_size, r.memory_size or "—", fmt_x(r.x, axis),
             f"{fmt_x(r.decoder_x, axis)} (×{r.x_ratio:.2f})", f"{r.loss:.4f}", f"{r.decoder_loss:.4f}",
             f"{r.delta:+.4f}", int(r.n_seeds)] for r in direct.itertuples()]
    rule = ("decoder-only run of the same study with equal params_total (within 1%)" if comparison == "parameters"
            else "decoder-only run of the same study nearest in log training FLOPs")
    return (f"Measured losses (mean over seeds), each paired with the {rule}; ×r is the architecture's x over its "
            "partner's.\n\n" + md_table(["architecture", "study", "decoder", "memory", AXIS_LABELS[axis],
                                         "decoder-only partner", "loss", "decoder-only loss", "Δ", "seeds"], rows))


def gap_section(gap: pd.DataFrame) -> str:
    if gap.empty:
        return f"*No decoder+memory and kNN-LM runs on the same decoder.*\n\n![gap]({GAP_PLOT})"
    rows = [[r.study, r.decoder_size, r.memory_size, r.seed, fmt_x(r.params_total, "params_total"),
             f"{r.loss_memory:.4f}", f"{r.loss_knn:.4f}", f"{r.gap:+.4f}"] for r in gap.itertuples()]
    return ("The memory is trained to imitate the kNN distribution of its decoder's datastore; the gap says how much "
            "of the retriever it recovers (negative: the memory is better).\n\n"
            + md_table(["study", "decoder", "memory", "seed", "parameters (total)", "decoder+memory loss",
                        "kNN-LM loss", "gap"], rows) + f"\n\n![decoder+memory minus kNN-LM]({GAP_PLOT})")


def lambda_section(best: pd.DataFrame) -> str:
    if best.empty:
        return f"*No kNN-LM or decoder+memory valid rows.*\n\n![λ curves]({LAMBDA_PLOT})"
    rows = [[LABELS[r.arch], r.decoder_size, r.memory_size or "—", r.n_seeds, _g(r.chosen_lambda, 3),
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
    lines = [f"{LABELS[a]} vs {AXIS_LABELS[x]}: not fitted ({why})." for (a, x), why in fits.skipped.items()]
    for comparison in ("parameters", "compute"):
        for arch in ARCHS[1:]:
            lines += [c for c in (_fitted_conclusion(matched, arch, comparison),
                                  _direct_conclusion(matched, arch, comparison)) if c]
    diffs = an.exponent_differences(fits)
    lines += [_exponent_conclusion(r) for r in diffs.itertuples()]
    if not gap.empty:
        below = int((gap["gap"] < 0).sum())
        lines.append(f"decoder+memory is below the kNN-LM on the same decoder in {below} of {len(gap)} runs "
                     f"(mean gap {gap['gap'].mean():+.3f} nats/token).")
    lines += _lambda_conclusions(best)
    if matched.empty:
        lines += [f"Only {LABELS[a]} could be fitted: α = {_ci(f['alpha'], f['alpha_ci'], 3)} vs {AXIS_LABELS[x]}; "
                  "there is nothing to compare it with." for a, by_axis in fits.items() for x, f in by_axis.items()]
    return lines


def _fitted_conclusion(matched: pd.DataFrame, arch: str, comparison: str) -> str | None:
    rows = matched[(matched["method"] == "fit") & (matched["arch"] == arch) & (matched["comparison"] == comparison)]
    rows = rows[np.isfinite(rows["delta"].astype(float))]
    if rows.empty:
        return None
    inside, what = rows[~rows["extrapolated"].astype(bool)], WHAT[comparison]
    if inside.empty:
        return (f"{LABELS[arch]} vs decoder-only at matched {what}: the two fits share no observed x, so every "
                "fitted comparison is an extrapolation (see the table).")
    n, lower = len(inside), int((inside["delta"] < 0).sum())
    sure = int(((inside["delta_hi"] < 0) | (inside["delta_lo"] > 0)).sum())
    if lower == n:
        head = f"{LABELS[arch]} is lower than decoder-only at every matched {what}"
    elif lower == 0:
        head = f"{LABELS[arch]} is higher than decoder-only at every matched {what}"
    else:
        head = f"{LABELS[arch]} is lower than decoder-only at {lower} of {n} matched values of {what}"
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
    return (f"Measured at {how}: {LABELS[arch]} is lower than decoder-only in {lower} of {len(rows)} pairs "
            f"(mean Δ {rows['delta'].mean():+.3f} nats/token).")


def _exponent_conclusion(r) -> str:
    if r.diff_lo > 0:
        verdict = "steeper than decoder-only (the interval of the difference lies above 0)"
    elif r.diff_hi < 0:
        verdict = "shallower than decoder-only (the interval of the difference lies below 0)"
    else:
        verdict = "not distinguishable from decoder-only's at 95% (the interval of the difference contains 0)"
    return (f"Exponent vs {AXIS_LABELS[r.x_axis]}: {LABELS[r.arch]} α = {r.alpha:.3f}, decoder-only "
            f"{r.decoder_alpha:.3f}, Δα {_delta(r.diff, r.diff_lo, r.diff_hi)}: {verdict}.")


def _lambda_conclusions(best: pd.DataFrame) -> list[str]:
    lines = []
    for arch in ARCHS[1:]:
        b = best[best["arch"] == arch]
        col = "best_lambda" if b["best_lambda"].notna().any() else "chosen_lambda"
        vals = b[col].dropna()
        if vals.empty:
            continue
        what = "best λ on valid (seed-mean curves)" if col == "best_lambda" else "λ chosen on valid"
        span = f"{vals.min():.2f}" if vals.min() == vals.max() else f"{vals.min():.2f}–{vals.max():.2f}"
        lines.append(f"{LABELS[arch]}: {what} is {span} across {len(vals)} sizes.")
    return lines
