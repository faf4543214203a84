"""The interpolation weight λ: valid perplexity over the λ grid, and the λ each architecture would pick.

Read from the valid rows' ``ppl_lambda_*`` columns, which the sweep writes for every architecture that
mixes something into the decoder (every one but the baseline).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.analysis.fits import clean

LAMBDA_PREFIX = "ppl_lambda_"


def lambda_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Valid perplexity per λ in long format (study, arch, decoder_size, memory_size, seed, params_total, lambda, ppl).

    Read from the ``ppl_lambda_*`` columns of valid rows; missing columns or NaN cells give no rows.
    ``params_total`` is carried along so that curves can be ordered by size.
    """
    cols = [c for c in df.columns if c.startswith(LAMBDA_PREFIX)]
    keys = ["study", "arch", "decoder_size", "memory_size", "seed", "params_total"]
    out_cols = keys + ["lambda", "ppl"]
    if not cols:
        return pd.DataFrame(columns=out_cols)
    valid = clean(df)
    valid = valid[(valid["split"] == "valid") & (valid["arch"] != architectures.baseline().name)]
    long = valid[keys + cols].melt(id_vars=keys, value_vars=cols, var_name="lambda", value_name="ppl")
    long["lambda"] = long["lambda"].str[len(LAMBDA_PREFIX):].astype(float)
    long["ppl"] = pd.to_numeric(long["ppl"], errors="coerce")
    long = long[np.isfinite(long["ppl"])]
    return long[out_cols].sort_values(keys + ["lambda"]).reset_index(drop=True)


def best_lambdas(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, decoder_size, memory_size): the λ minimising seed-mean valid perplexity.

    Also the λ the table records as chosen on valid (``chosen_lambda``, mean over seeds) and the
    perplexity at λ = 0 (the decoder alone), so the gain from mixing can be read off. Without
    ``ppl_lambda_*`` columns only ``chosen_lambda`` is filled.
    """
    keys = ["arch", "decoder_size", "memory_size"]
    table = clean(df)
    table = table[(table["split"] == "valid") & (table["arch"] != architectures.baseline().name)]
    chosen = table.groupby(keys, as_index=False).agg(chosen_lambda=("lambda", "mean"), n_seeds=("seed", "nunique"))
    curves = lambda_curves(df)
    if curves.empty:
        return _by_size(chosen.assign(best_lambda=np.nan, best_ppl=np.nan, ppl_lambda_0=np.nan), table)
    mean = curves.groupby(keys + ["lambda"], as_index=False)["ppl"].mean()
    best = mean.loc[mean.groupby(keys)["ppl"].idxmin()].rename(columns={"lambda": "best_lambda", "ppl": "best_ppl"})
    zero = mean[mean["lambda"] == 0].rename(columns={"ppl": "ppl_lambda_0"}).drop(columns="lambda")
    return _by_size(chosen.merge(best, on=keys, how="left").merge(zero, on=keys, how="left"), table)


def _by_size(frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Rows in architecture order, then from the smallest model to the largest."""
    keys = ["arch", "decoder_size", "memory_size"]
    size = table.groupby(keys, as_index=False)["params_total"].mean()
    frame = frame.merge(size, on=keys, how="left")
    rank = architectures.ranked(table["arch"]).index
    frame = frame.assign(order=frame["arch"].map(rank)).sort_values(["order", "params_total"])
    return frame.drop(columns="order").reset_index(drop=True)
