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
A ``--profile`` run also writes torch-profiler tables of one decoder training window and one
clustered-search list, which is how the stage's dominant kernels were found.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mlpmem_lightning.bench.targets import bench_targets
from mlpmem_lightning.bench.timing import gpu_name, peak_flops
from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError

log = logging.getLogger(__name__)


# -- decoder training ---------------------------------------------------------------------------
def _step_timer(warmup: int):
    import lightning as L

    class StepTimer(L.Callback):
        """CUDA events at each batch end; per-step times are the gaps after ``warmup`` steps."""

        def __init__(self) -> None:
            self.events: list[Any] = []
            self.wall: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if torch.cuda.is_available():
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                self.events.append(ev)
            self.wall.append(time.perf_counter())

        def step_seconds(self) -> list[float]:
            if self.events:
                torch.cuda.synchronize()
                ms = [a.elapsed_time(b) for a, b in zip(self.events[warmup:], self.events[warmup + 1:])]
                return [m / 1e3 for m in ms]
            return [b - a for a, b in zip(self.wall[warmup:], self.wall[warmup + 1:])]

    return StepTimer()


TRAIN_MODES = {"eager": (False, False), "compiled": (True, False), "graph": (True, True)}  # (compile, cuda_graph)


def bench_train(sizes: list[str], token_store: str, seq_len: int = 256, batch: int = 64, steps: int = 30,
                warmup: int = 10, mode: str = "eager", num_workers: int = 4,
                profile_dir: Path | None = None, reference: bool = True) -> list[dict]:
    """tokens/s and MFU of ``DecoderLM`` training at each size (one Lightning fit of warmup + steps), and the
    plain-PyTorch reference (``bench.reference``) of the same shapes in the same ``mode``, measured right after.

    ``mode``: ``eager``; ``compiled`` (``torch.compile``); ``graph`` (compiled, and the step captured as a CUDA
    graph: ``DecoderLM(cuda_graph=True)``; the reference captures its whole step, optimizer included)."""
    from mlpmem_lightning.bench.reference import reference_tokens_per_s

    compile, cuda_graph = TRAIN_MODES[mode]
    import lightning as L

    from mlpmem_lightning.data.datamodule import LMDataModule
    from mlpmem_lightning.lightning.decoder_lm import DecoderLM
    from mlpmem_lightning.models.ladder import flops_per_token, get_size, total_params

    rows, gpu = [], gpu_name()
    for size in sizes:
        dm = LMDataModule(token_store, seq_len=seq_len, batch_size=batch, num_workers=num_workers)
        model = DecoderLM(size=size, max_tokens=None, compile=compile, cuda_graph=cuda_graph)
        timer = _step_timer(warmup)
        trainer = L.Trainer(accelerator="auto", devices=1, precision="bf16-mixed" if gpu != "cpu" else "32",
                            max_steps=warmup + steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[timer], gradient_clip_val=1.0)
        trainer.fit(model, dm)
        step = statistics.median(timer.step_seconds())
        vocab = dm.vocab_size
        tps = batch * seq_len / step
        family = model.hparams.family  # the family it trained as, not a default
        fpt = flops_per_token(get_size(size), vocab, seq_len, family)
        peak = peak_flops(gpu)
        ref = reference_tokens_per_s(size, vocab, batch, seq_len, steps, warmup, compile, cuda_graph) \
            if gpu != "cpu" and reference else None
        rows.append({"bench": "train", "gpu": gpu, "dtype": "bf16-mixed" if gpu != "cpu" else "fp32",
                     "decoder_size": size, "params_total": total_params(get_size(size), vocab, family), "vocab": vocab,
                     "batch": batch, "seq_len": seq_len, "mode": mode, "compile": compile, "cuda_graph": cuda_graph,
                     "step_ms": round(step * 1e3, 3), "tokens_per_s": round(tps),
                     "model_tflops": round(fpt * tps / 1e12, 2), "mfu": round(fpt * tps / peak, 4) if peak else None,
                     "reference_tokens_per_s": round(ref) if ref else None,
                     "reference_mfu": round(fpt * ref / peak, 4) if ref and peak else None,
                     "vs_reference": round(tps / ref, 3) if ref else None})
        log.info("train %s", rows[-1])
        if profile_dir is not None and size == sizes[-1]:
            _profile_train(model, dm, profile_dir / f"profile_train_{size}_{mode}.txt")
    return rows


def _profile_train(model, dm, path: Path, steps: int = 5) -> None:
    """Profiler table (CUDA time) of a few training steps of an already fitted module."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # Lightning's teardown moved it to CPU
    net = model.net.to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=dev.type == "cuda")
    shape = (dm.batch_size, dm.seq_len)  # random tokens: the fit used up the budgeted batches, speed is data-blind
    x = torch.randint(0, model.hparams.vocab_size, shape, device=dev)
    y = torch.randint(0, model.hparams.vocab_size, shape, device=dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])

    def step() -> None:  # the call DecoderLM.forward makes, so a compiled net reuses its graph
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(
                net(input_ids=x, use_cache=False).logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # outside the profile: compilation and Triton autotuning would swamp it
        step()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=25))


# -- files -----------------------------------------------------------------------------------------
# what a row measured; the other columns are what it found
KEY_COLUMNS = ("gpu", "target_params", "decoder_size", "memory_size", "compile", "cuda_graph", "batch", "seq_len",
               "rows", "backend", "mode", "train_mode", "search", "datastore_rows")


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
                                         profile_dir=prof if size == sizes[-1] else None))

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
