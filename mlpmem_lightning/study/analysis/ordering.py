"""Is the baseline ordered by size, by more than the seeds move it?

A scaling study's first claim is about its baseline: a larger decoder-only model, trained by the study's recipe,
reaches a lower loss. A step between two sizes counts only if it is larger than what changing the seed does: the
study's acceptance (issue #15) asks each step to exceed twice the seed noise. The noise is the pooled standard
deviation of the seeds within a size (every size with two or more seeds contributes, weighted by its degrees of
freedom, since two seeds per size give a poor estimate each), and a step's noise is that of the difference of two
seed means, σ·√(1/n_a + 1/n_b). Each size is taken at its largest token budget, as the fits against parameters
take it (:func:`.fits.fit_points`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.analysis.comparisons import param_axis
from mlpmem_lightning.study.analysis.fits import clean, fit_points

NOISE_MULTIPLE = 2.0  # a step is resolved when the loss falls by more than this many noise standard deviations


def size_means(df: pd.DataFrame, split: str = "test", arch: str | None = None) -> pd.DataFrame:
    """Per (study, decoder size) at its largest budget: the parameter axis, mean loss, seed count and seed sd."""
    arch = arch or architectures.baseline().name
    axis = param_axis(df)
    pts = fit_points(clean(df), arch, axis, split)
    cols = ["study", "decoder_size", axis, "loss", "n_seeds", "sd"]
    if pts.empty:
        return pd.DataFrame(columns=cols)
    out = pts.groupby(["study", "decoder_size"], as_index=False).agg(
        **{axis: (axis, "mean")}, loss=("loss", "mean"), n_seeds=("loss", "size"), sd=("loss", "std"))
    return out[cols].sort_values(["study", axis]).reset_index(drop=True)


def pooled_seed_sd(sizes: pd.DataFrame) -> tuple[float, int]:
    """The pooled within-size standard deviation and its degrees of freedom (NaN, 0 without a repeated seed)."""
    rep = sizes[sizes["n_seeds"] >= 2]
    dof = int((rep["n_seeds"] - 1).sum())
    if dof == 0:
        return float("nan"), 0
    return float(np.sqrt(((rep["n_seeds"] - 1) * rep["sd"] ** 2).sum() / dof)), dof


def size_steps(df: pd.DataFrame, split: str = "test", arch: str | None = None) -> pd.DataFrame:
    """One row per step to the next larger size of a study: how much the loss fell (``drop`` > 0 is better), the
    step's seed noise, and whether it is resolved (``drop`` > NOISE_MULTIPLE × noise; None where no size of the
    study has two seeds, so the noise is unknown)."""
    rows = []
    for study, sizes in size_means(df, split, arch).groupby("study", sort=True):
        sd, dof = pooled_seed_sd(sizes)
        for a, b in zip(sizes.itertuples(), sizes.iloc[1:].itertuples(), strict=False):
            noise = sd * np.sqrt(1 / a.n_seeds + 1 / b.n_seeds)
            drop = a.loss - b.loss
            rows.append({"study": study, "from": a.decoder_size, "to": b.decoder_size, "drop": drop,
                         "noise": noise, "seed_sd": sd, "dof": dof,
                         "resolved": None if dof == 0 else bool(drop > NOISE_MULTIPLE * noise)})
    return pd.DataFrame(rows, columns=["study", "from", "to", "drop", "noise", "seed_sd", "dof", "resolved"])
