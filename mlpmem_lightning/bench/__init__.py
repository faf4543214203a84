"""`mlpmem bench`: throughput of every stage, one CSV per section plus a markdown table.

Sections (each row names the GPU, dtype, sizes and batch):
- ``train``: decoder training tokens/s and MFU through the real path (``DecoderLM`` in a Lightning
  ``Trainer``, bf16-mixed), timed by CUDA events at every batch end after a warm-up, so data loading
  and the optimizer step are included. MFU = ``sizes.flops_per_token`` x tokens/s over the chip's
  dense bf16 peak.
- ``targets``: rows/s of the kNN search + aggregation of ``mlpmem targets`` (k=1024) on synthetic
  clustered keys (``bench.synthetic``) at several datastore sizes, per backend of the search registry:
  ``clustered`` as a whole run through ``build_targets``, and, on a sample of queries, ``torch``
  (per-query-probe ``TorchIVF``, the "before"), ``faiss`` (faiss-cpu IVFPQ on the host's cores) and any
  other registered backend through the registry. Exact torch search always runs: recall@k of the
  others is measured against it.
  (``bench.targets``)
- ``generate`` and ``memory``: see ``bench.infer``.
- ``speed_claim``: a decoder of N parameters against a decoder of N/2 plus a memory of N/2 (``bench.speed_claim``).
A ``--profile`` run also writes profiler tables: of a short decoder fit (kernels, host ops, host seconds per
Lightning hook; ``bench.train``), of one clustered-search list, and of memory training steps. They are how each
stage's dominant costs were found.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mlpmem_lightning.bench.targets import bench_targets
from mlpmem_lightning.bench.train import TRAIN_MODES, bench_train  # noqa: F401  (the bench's names)
from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError

log = logging.getLogger(__name__)


# -- files -----------------------------------------------------------------------------------------
# what a row measured; the other columns are what it found
KEY_COLUMNS = ("gpu", "target_params", "decoder_size", "memory_size", "compile", "cuda_graph", "batch", "seq_len",
               "rows", "backend", "mode", "train_mode", "search", "datastore_rows", "log_every_n_steps")


def write_section(out: Path, section: str, rows: list[dict]) -> Path:
    """``<out>/<section>.csv`` (an earlier row of the same key replaced, the others kept) and ``bench.md``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{section}.csv"
    new = pd.DataFrame(rows)
    if path.is_file():
        old = pd.read_csv(path)
        keys = [c for c in KEY_COLUMNS if c in old.columns and c in new.columns]
        new = pd.concat([old[~_row_keys(old, keys).isin(set(_row_keys(new, keys)))], new], ignore_index=True)
    artifacts.atomic_write_text(path, new.to_csv(index=False))
    write_markdown(out)
    return path


def _row_keys(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One string per row from ``columns``, with a missing cell read back from CSV equal to ''."""
    cells = df[columns].astype(object).map(lambda v: "" if pd.isna(v) else str(v))
    return cells.agg("|".join, axis=1)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub table (pandas' own needs the optional ``tabulate``)."""
    cells = df.astype(object).where(df.notna(), "").astype(str)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells.itertuples(index=False)])


def write_markdown(out: Path) -> Path:
    parts = ["# Benchmarks (`mlpmem bench`)\n", "Generated from the CSVs beside this file; see NOTES.md for how "
             "each number was measured and what changed between versions.\n"]
    for path in sorted(out.glob("*.csv")):
        parts += [f"\n## {path.stem}\n", markdown_table(pd.read_csv(path)), ""]
    md = out / "bench.md"
    artifacts.atomic_write_text(md, "\n".join(parts) + "\n")
    return md


def run_bench(sections: list[str], out: Path, token_store: str, sizes: list[str], rows: list[int],
              work: Path, train_modes: list[str], profile: bool = False, **kw: Any) -> None:
    """Run the chosen sections, writing each section's CSV as soon as it is done."""
    out.mkdir(parents=True, exist_ok=True)
    prof, dev = (out if profile else None), ("cuda" if torch.cuda.is_available() else "cpu")

    def add(section: str, rows_: list[dict]) -> None:  # written as soon as measured: a killed run keeps them
        write_section(out, section, rows_)

    def train() -> None:  # in the order of ``train_modes``: put the fastest to compile first
        for mode in train_modes:
            for size in sizes:
                add("train", bench_train([size], token_store, mode=mode, batch=kw.get("batch", 64),
                                         seq_len=kw.get("seq_len", 256), steps=kw.get("steps", 30),
                                         reference=kw.get("reference", True),
                                         log_every_n_steps=kw.get("log_every_n_steps", 50),
                                         profile_dir=prof))

    def targets() -> None:
        for n in rows:
            bench_targets([n], work, profile_dir=prof if n == rows[-1] else None, emit=lambda r: add("targets", [r]),
                          backends=kw.get("targets_backends"))

    def generate() -> None:
        from mlpmem_lightning.bench.infer import bench_generate

        for s in kw.get("generate_sizes", ["12m"]):
            work.mkdir(parents=True, exist_ok=True)
            add("generate", bench_generate(s, kw.get("vocab", 16384), kw.get("datastore_rows", 10_000_000), dev,
                                           repeats=kw.get("repeats", 3), work=work))

    def memory() -> None:
        from mlpmem_lightning.bench.infer import bench_memory_training

        for s in kw.get("memory_sizes", sizes):
            add("memory", bench_memory_training(s, kw.get("vocab", 16384), dev, profile_dir=prof,
                                                train_modes=tuple(kw.get("memory_train_modes", ("eager",)))))

    def speed_claim() -> None:
        from mlpmem_lightning.bench.speed_claim import bench_speed_claim

        for s in kw.get("claim_sizes", ["25m", "100m"]):
            add("speed_claim", bench_speed_claim(s, kw.get("vocab", 16384), dev, repeats=kw.get("repeats", 3)))

    run = {"train": train, "targets": targets, "generate": generate, "memory": memory, "speed_claim": speed_claim}
    failed = []
    for section in sections:  # in the order given, so a time-limited run measures what matters first
        try:
            run[section]()
        except Exception:  # one broken section must not cost a lease the others' numbers
            log.exception("bench section %s failed", section)
            failed.append(section)
    if failed:
        raise UserError(f"bench sections {', '.join(failed)} failed (traceback above); the others' rows are written")
    log.info("bench: %s", json.dumps(sections))
