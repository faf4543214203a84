"""The results table of DESIGN.md: one row per trained model x architecture x split.

Reading one checks it: the required columns, numbers in the numeric ones, a finite loss in every row, one
token store.

The ``arch`` values are the names of the architecture registry (:mod:`mlpmem_lightning.study.architectures`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError

COLUMNS = (
    "study", "trial", "arch", "decoder_size", "memory_size", "params_decoder", "params_memory", "params_total",
    "train_tokens", "flops_train_total", "lambda", "split", "loss", "ppl", "seed",
)
# written by every sweep since issue #15, right after COLUMNS; not required on reading, so older tables still load
RECIPE_COLUMNS = ("params_non_embedding", "temperature", "lr", "epochs")


def write_results(rows: list[dict], path: str | Path) -> pd.DataFrame:
    """Write rows (required columns first, extras after) atomically."""
    df = pd.DataFrame(rows)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results rows lack required columns {missing}")
    first = list(COLUMNS) + [c for c in RECIPE_COLUMNS if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    artifacts.atomic_write_text(path, df.to_csv(index=False))
    return df


def read_results(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"results file {path} does not exist: run `mlpmem sweep` or `mlpmem demo` first")
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks required columns {', '.join(missing)}: "
                        "it must follow DESIGN.md's results schema")
    _check_numbers(df, path)
    if "token_store_fingerprint" in df.columns:  # one study, one dataset: fits across token stores mean nothing
        stores = sorted(df["token_store_fingerprint"].dropna().astype(str).unique())
        if len(stores) > 1:
            raise UserError(f"{path} mixes rows from token stores {stores[0]} and {stores[1]}: "
                            "report each token store's runs separately")
    return df


NUMERIC = ("params_decoder", "params_memory", "params_total", "train_tokens", "flops_train_total", "lambda", "loss",
           "ppl", "seed")


def _check_numbers(df: pd.DataFrame, path: Path) -> None:
    """Numbers where the schema has numbers, and a finite loss in every row: a fit that silently drops a row
    (NaN/inf loss) would disagree with report.md's row counts, so such rows are named and refused."""
    for col in NUMERIC + tuple(c for c in RECIPE_COLUMNS if c in df.columns):
        values = pd.to_numeric(df[col], errors="coerce")
        text = values.isna() & df[col].notna()
        if text.any():
            i = text.idxmax()
            raise UserError(f"{path}: column {col} holds text ({df[col][i]!r} in line {i + 2}, {_name(df, i)}): "
                            f"every {col} must be a number")
        df[col] = values
    bad = df.index[~np.isfinite(df["loss"].astype(float))]
    if len(bad):
        named = "; ".join(f"{_name(df, i)} (line {i + 2})" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise UserError(f"{path}: non-finite loss (NaN/inf/empty) in {len(bad)} rows: {named}{more}: "
                        "re-run those trials or drop the rows, then run `mlpmem report` again")


def _name(df: pd.DataFrame, i: int) -> str:
    """A row as arch, sizes, seed and split: e.g. ``mlp_memory 200k/mem-200k seed 0 test``."""
    r = df.loc[i]
    mem = f"/{r['memory_size']}" if isinstance(r["memory_size"], str) and r["memory_size"] else ""
    return f"{r['arch']} {r['decoder_size']}{mem} seed {r['seed']} {r['split']}"
