"""The per-run perplexity table: one row per model (size × architecture × budget × seed), both splits side by side.

λ* alone hides what the mixture is made of. A memory whose λ* is 0.9 is mostly the memory: its perplexity alone
(λ = 1) says whether it is a better language model than its decoder, and at the paper's λ = 0.25 whether it is a
better retrieval component than the kNN-LM. So the table always shows perplexity at λ = 1 and λ = 0.25 next to
λ*, read from the λ grid every mixing architecture evaluates in one pass (``ppl_lambda_*`` columns of the results;
valid rows always carry them, test rows where the sweep recorded the test grid too).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.analysis.fits import clean
from mlpmem_lightning.study.analysis.lambdas import LAMBDA_PREFIX

MODEL = ["study", "arch", "decoder_size", "memory_size", "train_tokens", "seed"]
OPTIONAL = ("params_non_embedding", "temperature", "lr", "epochs", "last10_improvement", "converged")
FIXED_LAMBDAS = (0.25, 1.0)  # the paper's λ, and the mixed-in component alone


def lambda_column(lam: float) -> str:
    return f"{LAMBDA_PREFIX}{lam:.2f}"


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: its settings, λ* (chosen on valid) and, per split, perplexity at λ* and at each of
    ``FIXED_LAMBDAS`` (NaN where the results hold no grid for that split, and always for the baseline, which
    mixes nothing in).

    Columns: ``MODEL`` keys, ``params_total`` and whichever of ``OPTIONAL`` the table has, ``lambda``, then
    ``{split}_ppl`` and ``{split}_ppl_lambda_{λ}`` for valid and test. Ordered by architecture (registry order),
    then size, budget and seed.
    """
    df = clean(df)
    extra = [c for c in OPTIONAL if c in df.columns]
    keys = MODEL + ["params_total"] + extra
    valid = df[df["split"] == "valid"].set_index(MODEL)
    base = architectures.baseline().name
    out = df.drop_duplicates(MODEL)[keys].set_index(MODEL)
    out["lambda"] = valid["lambda"].reindex(out.index) if not valid.empty else np.nan
    if (out["lambda"].isna()).any():  # a table with test rows only: the test row's λ is the one chosen on valid
        test_lam = df[df["split"] == "test"].set_index(MODEL)["lambda"]
        out["lambda"] = out["lambda"].fillna(test_lam.reindex(out.index))
    for split in ("valid", "test"):
        rows = df[df["split"] == split].set_index(MODEL)
        out[f"{split}_ppl"] = np.exp(rows["loss"].astype(float)).reindex(out.index)
        for lam in FIXED_LAMBDAS:
            col = lambda_column(lam)
            vals = rows[col].reindex(out.index) if col in rows.columns else pd.Series(np.nan, index=out.index)
            out[f"{split}_{col}"] = pd.to_numeric(vals, errors="coerce")
    out = out.reset_index()
    mixing = out["arch"] != base
    out.loc[~mixing, "lambda"] = np.nan
    order = out["arch"].map(pd.Series(range(len(architectures.ranked(out["arch"]))),
                                      index=architectures.ranked(out["arch"])))
    out = out.assign(_o=order).sort_values(["_o", "params_total", "train_tokens", "memory_size", "seed"])
    return out.drop(columns="_o").reset_index(drop=True)


def missing_optional(df: pd.DataFrame) -> list[str]:
    """The optional columns (DESIGN.md's newer ones) a results table lacks or leaves empty everywhere. A kNN
    temperature only belongs to rows that mix in a kNN distribution or imitate one: a table of decoder-only rows
    (a study's decoder frontier so far) lacks nothing when it has none."""
    def lacks(c: str) -> bool:
        rows = df[df["arch"] != "decoder"] if c == "temperature" and "arch" in df.columns else df
        return c not in df.columns or (len(rows) > 0 and rows[c].isna().all())
    return [c for c in OPTIONAL if lacks(c)]
