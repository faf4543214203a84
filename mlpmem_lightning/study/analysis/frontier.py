"""The decoder-only compute frontier and the IsoFLOP view.

"Matched compute" asks: for the FLOPs an architecture spent, how low could a decoder alone have got? With every
decoder size trained at two or more token budgets, the answer is the lower envelope of decoder-only loss against
``flops_train_total`` over all of those runs, not the one run of the same size: a smaller decoder trained longer
may be the better use of the same compute. Between the runs on the envelope the loss is interpolated linearly in
log FLOPs (scaling curves are smooth there); past the largest decoder run the envelope is unknown, and the last
point only bounds it from above, so such comparisons are flagged rather than made as if measured.

The IsoFLOP view (Hoffmann et al. 2022, approach 2) groups decoder runs into compute levels and plots loss
against parameters within each level: the minimum is the compute-optimal size at that level.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.analysis.fits import clean, points

FLOPS = "flops_train_total"
CELL = ["study", "decoder_size", "train_tokens"]  # one decoder trained once per seed: a cell of the ladder × budgets
ISOFLOP_DECADES = 0.25  # width of a compute level: runs within a factor 10^0.25 ≈ 1.78 of FLOPs share a level


def decoder_cells(df: pd.DataFrame, split: str = "test", axis: str = FLOPS) -> pd.DataFrame:
    """Decoder-only runs averaged over seeds per (study, decoder size, token budget).

    Columns: the cell keys, ``axis`` (mean), ``loss`` (mean), ``loss_min``/``loss_max`` (the seed spread) and
    ``n_seeds``. Rows without a finite positive ``axis`` are left out.
    """
    pts = points(clean(df), architectures.baseline().name, axis, split)
    cols = CELL + [axis, "loss", "loss_min", "loss_max", "n_seeds"]
    if pts.empty:
        return pd.DataFrame(columns=cols)
    pts = pts.assign(**{c: pts[c].fillna("") for c in CELL if c != "train_tokens"})
    out = pts.groupby(CELL, as_index=False, dropna=False).agg(
        **{axis: (axis, "mean")}, loss=("loss", "mean"), loss_min=("loss", "min"), loss_max=("loss", "max"),
        n_seeds=("seed", "nunique"))
    return out[cols].sort_values([axis, "loss"]).reset_index(drop=True)


def compute_frontier(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The lower envelope of decoder-only loss against training FLOPs, per study.

    A cell (seed mean) is on the envelope when no cell of the same study with no more FLOPs has a lower loss.
    Sorted by FLOPs, the envelope's losses strictly decrease.
    """
    cells = decoder_cells(df, split)
    keep = []
    for _, rows in cells.groupby("study", sort=True):
        best = np.inf
        for i, r in rows.sort_values([FLOPS, "loss"]).iterrows():
            if r["loss"] < best:
                keep.append(i)
                best = r["loss"]
    return cells.loc[keep].sort_values(["study", FLOPS]).reset_index(drop=True)


def frontier_loss(frontier: pd.DataFrame, flops, study: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The envelope's loss at ``flops`` and where each x lies: "on" (within its range), "beyond" (more FLOPs than
    any decoder run: the last envelope loss, an upper bound of the true frontier) or "before" (fewer FLOPs than
    any decoder run: NaN, nothing to compare with)."""
    f = frontier if study is None else frontier[frontier["study"] == study]
    x = np.atleast_1d(np.asarray(flops, dtype=float))
    if f.empty:
        return np.full(x.shape, np.nan), np.full(x.shape, "before", dtype=object)
    fx, fl = np.log(f[FLOPS].to_numpy(float)), f["loss"].to_numpy(float)
    lx = np.log(x)
    loss = np.interp(lx, fx, fl)
    where = np.where(lx < fx[0] - 1e-12, "before", np.where(lx > fx[-1] + 1e-12, "beyond", "on")).astype(object)
    loss[where == "before"] = np.nan
    return loss, where


def frontier_rows(df: pd.DataFrame, split: str = "test") -> list[dict]:
    """Every other architecture's seed-mean run against the decoder-only envelope of its study at its FLOPs."""
    frontier, base = compute_frontier(df, split), architectures.baseline().name
    df = clean(df)
    rows = []
    for arch in architectures.ranked(df["arch"]):
        if arch == base:
            continue
        pts = points(df, arch, FLOPS, split)
        if pts.empty:
            continue
        means = pts.groupby(["study", "decoder_size", "memory_size", "train_tokens", FLOPS], as_index=False).agg(
            loss=("loss", "mean"), n_seeds=("seed", "nunique")).sort_values(["study", FLOPS])
        for r in means.itertuples(index=False):
            x = float(getattr(r, FLOPS))
            dec, where = frontier_loss(frontier, x, r.study)
            if where[0] == "before":
                continue
            rows.append({"comparison": "compute", "method": "frontier", "arch": arch, "study": r.study,
                         "decoder_size": r.decoder_size, "memory_size": r.memory_size, "x": x, "loss": float(r.loss),
                         "decoder_x": x, "decoder_loss": float(dec[0]), "delta": float(r.loss - dec[0]),
                         "x_ratio": 1.0, "n_seeds": int(r.n_seeds), "extrapolated": where[0] == "beyond"})
    return rows


def isoflop_groups(df: pd.DataFrame, split: str = "test", axis: str = "params_non_embedding",
                   decades: float = ISOFLOP_DECADES) -> pd.DataFrame:
    """Decoder cells grouped into compute levels: level k holds FLOPs in [10^(k·w), 10^((k+1)·w)), w = ``decades``.

    Columns: the cells of :func:`decoder_cells` with ``axis`` (parameters) and FLOPs both, ``level`` (k) and
    ``level_flops`` (the level's geometric centre). Only levels with at least two distinct sizes are kept: one
    size says nothing about the best size at that compute.
    """
    cells = decoder_cells(df, split)
    cols = CELL + [axis, FLOPS, "loss", "loss_min", "loss_max", "n_seeds", "level", "level_flops"]
    if cells.empty or axis not in df.columns:
        return pd.DataFrame(columns=cols)
    size = clean(df)
    size = size[size["arch"] == architectures.baseline().name].groupby(CELL, as_index=False, dropna=False)[axis].mean()
    cells = cells.merge(size, on=CELL, how="left")
    cells = cells[np.isfinite(cells[axis].astype(float)) & (cells[axis].astype(float) > 0)]
    level = np.floor(np.log10(cells[FLOPS].to_numpy(float)) / decades + 1e-9).astype(int)
    cells = cells.assign(level=level, level_flops=10 ** ((level + 0.5) * decades))
    wide = cells.groupby(["study", "level"])["decoder_size"].transform("nunique") >= 2
    return cells[wide][cols].sort_values(["study", "level", axis]).reset_index(drop=True)
