"""The results table of DESIGN.md: one row per trained model x architecture x split.

The ``arch`` values are the names of the architecture registry (:mod:`mlpmem_lightning.study.architectures`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError

COLUMNS = (
    "study", "trial", "arch", "decoder_size", "memory_size", "params_decoder", "params_memory", "params_total",
    "train_tokens", "flops_train_total", "lambda", "split", "loss", "ppl", "seed",
)


def write_results(rows: list[dict], path: str | Path) -> pd.DataFrame:
    """Write rows (required columns first, extras after) atomically."""
    df = pd.DataFrame(rows)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results rows lack required columns {missing}")
    df = df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]
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
    if "token_store_fingerprint" in df.columns:  # one study, one dataset: fits across token stores mean nothing
        stores = sorted(df["token_store_fingerprint"].dropna().astype(str).unique())
        if len(stores) > 1:
            raise UserError(f"{path} mixes rows from token stores {stores[0]} and {stores[1]}: "
                            "report each token store's runs separately")
    return df
