"""Architectures compared with the baseline (matched parameters, matched compute, exponents) and with the
architecture each imitates (the memory against its kNN-LM).

The baseline, the order and the pairs come from the registry (:mod:`mlpmem_lightning.study.architectures`);
the fits from :mod:`.fits`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.analysis.fits import (
    X_AXES,
    claims_allowed,
    clean,
    difference_interval,
    fit_points,
    points,
    predict,
    predict_samples,
)
from mlpmem_lightning.study.analysis.frontier import frontier_rows

COMPARISONS = {"parameters": "params_non_embedding", "compute": "flops_train_total"}


def param_axis(df: pd.DataFrame) -> str:
    """The primary parameter axis: non-embedding parameters, or total parameters for a table without them."""
    col = "params_non_embedding"
    if col in df.columns and np.isfinite(pd.to_numeric(df[col], errors="coerce")).all():
        return col
    return "params_total"


def comparison_axes(df: pd.DataFrame) -> dict[str, str]:
    """``{"parameters": primary parameter axis, "compute": "flops_train_total"}`` for this table."""
    return {**COMPARISONS, "parameters": param_axis(df)}


def matched_comparison(df: pd.DataFrame, fits: dict, split: str = "test", param_rtol: float = 0.01) -> pd.DataFrame:
    """Each architecture against the baseline (decoder-only) at matched parameters and at matched compute.

    The ``decoder_*`` columns are the baseline's (the registry's ``baseline()``).

    ``method == "fit"``: for every x observed on that axis (any architecture), the fitted loss of the
    architecture and of decoder-only at that same x, their difference ``delta`` (negative: the
    architecture is better) and its bootstrap interval; ``extrapolated`` marks x outside either fit's
    observed range.

    ``method == "direct"`` (parameters): measured losses, averaged over seeds per (study, arch, decoder_size,
    memory_size, x), each paired with the decoder-only point of the same study whose parameter count (the
    primary axis, :func:`param_axis`) is equal within ``param_rtol`` (a kNN-LM and its own decoder, or a
    decoder+memory and a decoder-only model that happens to be as large); points without one are left out.

    ``method == "frontier"`` (compute): the same seed means against the lower envelope of decoder-only loss
    vs FLOPs of the same study (every size × budget; :mod:`.frontier`), interpolated in log FLOPs;
    ``extrapolated`` marks runs with more FLOPs than any decoder-only run (the envelope's last loss is then
    only an upper bound).
    """
    df = clean(df)
    rows = []
    for comparison, axis in comparison_axes(df).items():
        rows += _fitted_rows(df, fits, split, comparison, axis)
        if comparison == "parameters":
            rows += _direct_rows(df, split, comparison, axis, param_rtol)
    rows += frontier_rows(df, split)
    cols = ["comparison", "method", "arch", "study", "decoder_size", "memory_size", "x", "loss", "decoder_x",
            "decoder_loss", "delta", "delta_lo", "delta_hi", "x_ratio", "n_seeds", "extrapolated"]
    return pd.DataFrame(rows, columns=cols)


def compared(df: pd.DataFrame) -> list[str]:
    """The architectures compared with the baseline: every other one, in registry order."""
    return [a for a in architectures.ranked(df["arch"]) if a != architectures.baseline().name]


def _fitted_rows(df: pd.DataFrame, fits: dict, split: str, comparison: str, axis: str) -> list[dict]:
    dec = fits.get(architectures.baseline().name, {}).get(axis)
    xs = np.unique(np.concatenate([np.empty(0)] + [points(df, a, axis, split)[axis].to_numpy(float)
                                                   for a in df["arch"].unique()]))
    rows = []
    for arch in compared(df):
        fit = fits.get(arch, {}).get(axis)
        if fit is None:
            continue
        for x in xs:
            loss = float(predict(fit, x))
            row = {"comparison": comparison, "method": "fit", "arch": arch, "x": float(x), "loss": loss,
                   "decoder_x": float(x), "x_ratio": 1.0, "extrapolated": not _inside(fit, x)}
            if dec is not None:
                d = float(predict(dec, x))
                lo, hi = difference_interval(predict_samples(fit, x)[:, 0], predict_samples(dec, x)[:, 0],
                                             fit["ci_level"])
                row.update(decoder_loss=d, delta=loss - d, delta_lo=lo, delta_hi=hi,
                           extrapolated=row["extrapolated"] or not _inside(dec, x))
            rows.append(row)
    return rows


def _inside(fit: dict, x: float) -> bool:
    return fit["x_min"] * (1 - 1e-9) <= x <= fit["x_max"] * (1 + 1e-9)


def seed_means(df: pd.DataFrame, split: str, axis: str) -> pd.DataFrame:
    """Mean loss over seeds per (study, arch, decoder_size, memory_size, x), with the seed count, over the runs the
    fits use (:func:`fit_points`: each model at its largest token budget against parameters)."""
    frames = [fit_points(df, a, axis, split) for a in architectures.ranked(df["arch"])]
    rows = pd.concat(frames) if frames else df.iloc[:0]
    keys = ["study", "arch", "decoder_size", "memory_size", axis]
    return rows.groupby(keys, as_index=False).agg(loss=("loss", "mean"), n_seeds=("seed", "nunique"))


def _direct_rows(df: pd.DataFrame, split: str, comparison: str, axis: str, param_rtol: float) -> list[dict]:
    means, base = seed_means(df, split, axis), architectures.baseline().name
    rows = []
    for _, p in means[means["arch"] != base].iterrows():
        dec = means[(means["arch"] == base) & (means["study"] == p["study"])]
        if dec.empty:
            continue
        dist = np.abs(np.log(dec[axis].to_numpy(float) / float(p[axis])))
        k = int(np.argmin(dist))
        if comparison == "parameters" and dist[k] > np.log1p(param_rtol):
            continue
        d = dec.iloc[k]
        rows.append({"comparison": comparison, "method": "direct", "arch": p["arch"], "study": p["study"],
                     "decoder_size": p["decoder_size"], "memory_size": p["memory_size"], "x": float(p[axis]),
                     "loss": float(p["loss"]), "decoder_x": float(d[axis]), "decoder_loss": float(d["loss"]),
                     "delta": float(p["loss"] - d["loss"]), "x_ratio": float(p[axis]) / float(d[axis]),
                     "n_seeds": int(p["n_seeds"]), "extrapolated": False})
    return rows


def exponent_differences(fits: dict, ci: float = 0.95) -> pd.DataFrame:
    """α of each architecture minus the baseline's α, per axis, with a bootstrap interval.

    The paper's claim is a *steeper* power law for decoder+memory; that is only supported where
    this interval lies above zero.
    """
    base = architectures.baseline().name
    rows = []
    for arch in [a for a in architectures.ranked(fits) if a != base]:
        for axis in X_AXES:
            fit, dec = fits.get(arch, {}).get(axis), fits.get(base, {}).get(axis)
            if fit is None or dec is None:
                continue
            lo, hi = difference_interval(fit["samples"][:, 2], dec["samples"][:, 2], ci)
            rows.append({"arch": arch, "x_axis": axis, "alpha": fit["alpha"], "decoder_alpha": dec["alpha"],
                         "diff": fit["alpha"] - dec["alpha"], "diff_lo": lo, "diff_hi": hi,
                         "identified": fit["alpha_identified"] and dec["alpha_identified"],
                         "claim": claims_allowed(fit, dec)})
    return pd.DataFrame(rows, columns=["arch", "x_axis", "alpha", "decoder_alpha", "diff", "diff_lo", "diff_hi",
                                       "identified", "claim"])


def _on_same_decoder(df: pd.DataFrame, arch: str, reference: str, split: str) -> pd.DataFrame:
    """``arch``'s runs joined with ``reference``'s on the same decoder (study, decoder_size, seed), each at its
    largest token budget (fit_points): with two decoder budgets, one pair per decoder size. ``reference_loss``."""
    on = ["study", "decoder_size", "seed"]
    ref = fit_points(df, reference, "params_total", split)[on + ["loss"]].rename(columns={"loss": "reference_loss"})
    return fit_points(df, arch, "params_total", split).merge(ref, on=on)


def own_decoder_gains(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Each mixing architecture against decoder-only on the very decoder it mixes with.

    This is the comparison the paper reports (a base with and without its memory), so it is matched neither in
    parameters nor in compute; those are :func:`matched_comparison`'s. Pairing on one decoder cancels that decoder's
    own noise (GPU reruns of one seed differ by as much as seeds do): ``delta`` is the loss change, ``ppl_change``
    the relative perplexity change exp(delta) - 1 (negative: better).
    """
    df = clean(df)
    base = architectures.baseline().name
    cols = ["arch", "study", "decoder_size", "memory_size", "seed", "loss", "reference_loss", "delta", "ppl_change"]
    frames = []
    for arch in architectures.registered():
        if arch.baseline:
            continue
        pairs = _on_same_decoder(df, arch.name, base, split)
        delta = pairs["loss"] - pairs["reference_loss"]
        frames.append(pairs.assign(delta=delta, ppl_change=np.expm1(delta))[cols].sort_values(["decoder_size", "seed"]))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def imitation_gaps(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Loss of each architecture minus that of the one it imitates (decoder+memory minus kNN-LM), built on the
    same decoder.

    Pairs share study, decoder_size and seed: the memory imitates exactly that kNN-LM, so the gap
    is how much of the retriever the memory has learned (negative: the memory is better).
    """
    df = clean(df)
    cols = ["arch", "reference", "study", "decoder_size", "memory_size", "seed", "params_total", "loss",
            "reference_loss", "gap"]
    frames = []
    for arch in architectures.registered():
        if arch.imitates is None:
            continue
        pairs = _on_same_decoder(df, arch.name, arch.imitates, split)
        frames.append(pairs.assign(reference=arch.imitates, gap=pairs["loss"] - pairs["reference_loss"])[cols]
                      .sort_values(["params_total", "seed"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
