"""`mlpmem report`: results.csv -> fits.json, plots and a report.md that stands on its own.

The numbers come from :mod:`mlpmem_lightning.study.analysis`; :mod:`.plots` draws them and :mod:`.markdown`
writes them out. :func:`write_report` selects matplotlib's Agg backend, as a headless command should. Every
file is written to a temporary name and renamed, so an interrupted report never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from mlpmem_lightning.core.artifacts import atomic_write_text, fsync_rename, tmp_path
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import analysis as an
from mlpmem_lightning.study.report.markdown import imitators, render_markdown
from mlpmem_lightning.study.report.plots import (
    ISOFLOP_PLOT,
    LAMBDA_PLOT,
    PLOTS,
    gap_plot_name,
    plot_gap,
    plot_isoflop,
    plot_lambda_curves,
    plot_loss,
)
from mlpmem_lightning.study.results import read_results

__all__ = ["RUNS_CSV", "plot_gap", "plot_isoflop", "plot_lambda_curves", "plot_loss", "render_markdown",
           "save_figure", "write_report"]

log = logging.getLogger(__name__)
RUNS_CSV = "runs.csv"  # the per-run perplexity table of report.md, for machines


def write_report(results_csv: str | Path, out_dir: str | Path, *, split: str = "test", bootstrap: int = 1000,
                 seed: int = 0) -> Path:
    """Fit, plot and write ``fits.json``, the PNGs and ``report.md`` into ``out_dir``; the path of report.md."""
    matplotlib.use("Agg")
    raw = read_results(results_csv)
    df = an.clean(raw)
    if not (df["split"] == split).any():
        raise UserError(f"{results_csv} has no rows with split {split!r}: nothing to fit")
    try:
        fits = an.fit_all(df, split, bootstrap=bootstrap, seed=seed)
    except UserError as err:  # fewer than 3 sizes everywhere: the tables and λ/gap plots still say something
        fits = an.FitSet()
        fits.unfitted = str(err)
        log.warning("report: no power-law fits (%s); writing the tables and the λ and gap plots", err)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fits.json", json.dumps(_json_safe(an.fits_json(fits, split)), indent=2) + "\n")
    for axis, name in PLOTS.items():
        if axis != "params_non_embedding" or an.param_axis(df) == axis:  # an older table has no such column
            save_figure(plot_loss(df, fits, axis, split), out / name)
    save_figure(plot_isoflop(an.isoflop_groups(df, split, an.param_axis(df)), an.param_axis(df)), out / ISOFLOP_PLOT)
    save_figure(plot_lambda_curves(an.lambda_curves(df)), out / LAMBDA_PLOT)
    gaps = an.imitation_gaps(df, split)
    for arch in imitators():
        save_figure(plot_gap(gaps, arch), out / gap_plot_name(arch))
    atomic_write_text(out / RUNS_CSV, an.run_table(df).to_csv(index=False))
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
    """``path`` (PNG, for report.md) and the same name with ``.pdf`` (vector, for a paper), each atomically. The
    PDF has no creation date, so the same results give the same bytes and a committed report changes only with them."""
    for target, fmt in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
        tmp = tmp_path(target)
        fig.savefig(tmp, format=fmt, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        fsync_rename(tmp, target)
