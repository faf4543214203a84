"""`mlpmem bench`: throughput of every stage, one CSV per section plus a markdown table.

Sections (each row names the GPU, dtype, sizes and batch):
- ``train``: decoder training tokens/s and MFU through the real path (``DecoderLM`` in a Lightning
  ``Trainer``, bf16-mixed), timed by CUDA events at every batch end after a warm-up, so data loading
  and the optimizer step are included. MFU = ``sizes.flops_per_token`` x tokens/s over the chip's
  dense bf16 peak.
- ``targets``: rows/s of the kNN search + aggregation of ``mlpmem targets`` (k=1024) on synthetic
  clustered keys at several datastore sizes: the clustered IVF (whole run through ``build_targets``),
  and, on a sample of queries, exact torch search, per-query-probe ``TorchIVF`` (the "before") and
  faiss-cpu IVFPQ on the host's cores. Recall@k of the approximate ones against exact search.
- ``generate`` and ``memory``: see ``bench_infer``.
A ``--profile`` run also writes torch-profiler tables of one decoder training window and one
clustered-search list, which is how the stage's dominant kernels were found.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlpmem_lightning.core import artifacts

log = logging.getLogger(__name__)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (datasheets)


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


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


def bench_train(sizes: list[str], token_store: str, seq_len: int = 256, batch: int = 64, steps: int = 30,
                warmup: int = 10, compile: bool = False, num_workers: int = 4,
                profile_dir: Path | None = None) -> list[dict]:
    """tokens/s and MFU of ``DecoderLM`` training at each size (one Lightning fit of warmup + steps)."""
    import lightning as L

    from mlpmem_lightning.data.datamodule import LMDataModule
    from mlpmem_lightning.lightning.decoder_lm import DecoderLM
    from mlpmem_lightning.models.ladder import flops_per_token, get_size, total_params

    rows, gpu = [], gpu_name()
    for size in sizes:
        dm = LMDataModule(token_store, seq_len=seq_len, batch_size=batch, num_workers=num_workers)
        model = DecoderLM(size=size, max_tokens=None, compile=compile)
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
        rows.append({"bench": "train", "gpu": gpu, "dtype": "bf16-mixed" if gpu != "cpu" else "fp32",
                     "decoder_size": size, "params_total": total_params(get_size(size), vocab, family), "vocab": vocab,
                     "batch": batch, "seq_len": seq_len, "compile": compile, "step_ms": round(step * 1e3, 3),
                     "tokens_per_s": round(tps), "model_tflops": round(fpt * tps / 1e12, 2),
                     "mfu": round(fpt * tps / peak, 4) if peak else None})
        log.info("train %s", rows[-1])
        if profile_dir is not None and size == sizes[-1]:
            _profile_train(model, dm, profile_dir / f"profile_train_{size}{'_compiled' if compile else ''}.txt")
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


# -- kNN targets ----------------------------------------------------------------------------------
def synthetic_datastore(path: Path, n: int, d: int, vocab: int, seed: int = 0) -> Path:
    """A datastore directory of ``n`` mixture keys and Zipf tokens (``bench_infer.fill_mixture_keys``)."""
    from mlpmem_lightning.bench.infer import fill_mixture_keys, zipf_values

    path.mkdir(parents=True, exist_ok=True)
    keys = np.lib.format.open_memmap(path / "keys.npy", mode="w+", dtype=np.float16, shape=(n, d))
    fill_mixture_keys(keys, seed).flush()
    np.save(path / "values.npy", zipf_values(n, vocab, seed))
    artifacts.write_manifest(path, "datastore", {"N": n, "d": d, "fingerprint": f"synthetic-{n}-{d}-{seed}",
                                                 "layer": -1, "seq_len": 256})
    return path


def _rate(fn, queries: int) -> tuple[float, Any]:
    """(queries per second, result) of one synchronised call, after an untimed one (CUDA and cuBLAS
    start-up, lazy uploads: the first GPU work of a process ran 3x slower in lease 6d)."""
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return queries / (time.perf_counter() - t), out


def _recall(ids: torch.Tensor, exact: torch.Tensor) -> float:
    a, b = ids.cpu().numpy(), exact.cpu().numpy()
    return float(np.mean([len(np.intersect1d(x[x >= 0], y)) / len(y) for x, y in zip(a, b)]))


TARGET_BACKENDS = ("clustered", "torch-ivf", "faiss")


def bench_targets(rows: list[int], work: Path, d: int = 256, k: int = 1024, keep: int = 128, vocab: int = 16384,
                  nprobe: int = 32, sample: int = 2048, pq_m: int = 64, faiss_threads: int | None = None,
                  profile_dir: Path | None = None, emit: Callable[[dict], None] | None = None,
                  backends: tuple[str, ...] = TARGET_BACKENDS) -> list[dict]:
    """rows/s of each search backend at each datastore size (see the module docstring).

    ``emit`` receives each row as soon as it is measured (a 10M-row size takes minutes). ``backends``
    picks among ``TARGET_BACKENDS``; exact search always runs, as the recall reference.
    """
    import faiss

    from mlpmem_lightning.knn.search import TorchExact
    from mlpmem_lightning.knn.search.clustered import default_nlist

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gpu, out = gpu_name(), _Rows(emit)
    if faiss_threads:
        faiss.omp_set_num_threads(faiss_threads)
    for n in rows:
        ds = synthetic_datastore(work / f"ds-{n}", n, d, vocab)
        keys = np.load(ds / "keys.npy", mmap_mode="r")
        nlist = default_nlist(n)
        base = {"bench": "targets", "gpu": gpu, "dtype": "fp32 (keys fp16)", "rows": n, "d": d, "k": k,
                "keep": keep, "nlist": nlist, "nprobe": nprobe}
        pick = np.sort(np.random.default_rng(1).choice(n, size=sample, replace=False))
        q = torch.from_numpy(np.asarray(keys[pick], dtype=np.float32)).to(dev)

        exact = TorchExact(keys, dev)
        rate, (_, exact_ids) = _rate(lambda: exact.search(q, k + 1), sample)
        out.append({**base, "backend": "torch exact", "queries": sample, "rows_per_s": round(rate),
                    "recall": 1.0, "projected_full_s": round(n / rate, 1)})
        exact = None  # free its device copy of the keys

        if "clustered" in backends or "torch-ivf" in backends:
            _bench_ivf(ds, keys, q, exact_ids, work, base, out, k, keep, nlist, nprobe, dev,
                       profile_dir if n == rows[-1] else None, "torch-ivf" in backends)
        if "faiss" in backends:
            _bench_faiss(ds, q, exact_ids, base, out, pq_m, nlist, nprobe, k, sample)
        shutil.rmtree(work / f"targets-{n}", ignore_errors=True)
        shutil.rmtree(ds, ignore_errors=True)
    return list(out)


def _bench_faiss(ds: Path, q: torch.Tensor, exact_ids: torch.Tensor, base: dict, out: list, pq_m: int, nlist: int,
                 nprobe: int, k: int, sample: int) -> None:
    """faiss-cpu IVFPQ on the host's cores: index build, then ``sample`` queries."""
    import faiss

    from mlpmem_lightning.knn.index import build_index, load_index
    from mlpmem_lightning.knn.search import FaissSearcher

    n = base["rows"]
    t0 = time.perf_counter()
    build_index(ds, "ivfpq", nlist=nlist, m=pq_m, nbits=8, train_size=min(n, 256 * nlist))
    built = time.perf_counter() - t0
    pq = FaissSearcher(load_index(ds, "ivfpq"), nprobe=nprobe)
    rate, (_, pq_ids) = _rate(lambda: pq.search(q.cpu(), k + 1), sample)
    out.append({**base, "backend": f"faiss-cpu IVFPQ m={pq_m} ({faiss.omp_get_max_threads()} threads)",
                "queries": sample, "rows_per_s": round(rate), "recall": round(_recall(pq_ids, exact_ids), 4),
                "projected_full_s": round(built + n / rate, 1), "index_build_s": round(built, 1)})


class _Rows(list):
    """A list that hands each appended row to ``emit`` too."""

    def __init__(self, emit: Callable[[dict], None] | None) -> None:
        super().__init__()
        self.emit = emit

    def append(self, row: dict) -> None:
        super().append(row)
        if self.emit is not None:
            self.emit(row)


def _bench_ivf(ds: Path, keys: np.ndarray, q: torch.Tensor, exact_ids: torch.Tensor, work: Path, base: dict,
               out: list, k: int, keep: int, nlist: int, nprobe: int, dev: str, profile_dir: Path | None,
               per_query: bool) -> None:
    """The clustered IVF as a whole ``build_targets`` run, then (``per_query``) ``TorchIVF`` on 512 queries."""
    from mlpmem_lightning.knn.search import TorchIVF
    from mlpmem_lightning.knn.search.clustered import ClusteredIVF, cached_centroids
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets

    n = len(keys)
    settings = TargetSettings(index="ivfflat", k=k, keep=keep, nprobe=nprobe, nlist=nlist)
    t0 = time.perf_counter()
    m = build_targets(ds, work / f"targets-{n}", settings, backend="clustered", device=dev)
    full = time.perf_counter() - t0
    # the centroids build_targets cached beside the datastore: the same lists, no second k-means
    ivf = ClusteredIVF(keys, nlist, nprobe, dev, centroids=cached_centroids(ds, keys, nlist))
    _, ivf_ids = ivf.search(q, k + 1)
    out.append({**base, "backend": "clustered IVF (whole targets run)", "queries": n,
                "rows_per_s": round(n / full), "recall": round(_recall(ivf_ids, exact_ids), 4),
                "projected_full_s": round(full, 1), "mass_kept_mean": round(m["mass_kept_mean"], 4)})
    if profile_dir is not None:
        values = torch.from_numpy(np.load(ds / "values.npy").astype(np.int64)).to(dev)
        _profile_search(ivf, values, profile_dir / f"profile_targets_{n}.txt", k + 1, keep)
    if not per_query:
        return
    lists = TorchIVF(keys, ivf.centroids.cpu().numpy(), dev, nprobe)
    ivf = None  # free its device copy of the keys
    few = q[:512]
    rate, (_, lst_ids) = _rate(lambda: lists.search(few, k + 1), len(few))
    out.append({**base, "backend": "torch IVF per-query probes (before)", "queries": len(few),
                "rows_per_s": round(rate), "recall": round(_recall(lst_ids, exact_ids[:512]), 4),
                "projected_full_s": round(n / rate, 1)})



def _profile_search(ivf, values: torch.Tensor, path: Path, k: int, keep: int, lists: int = 16) -> None:
    """Profiler table of the targets list path (search, then aggregation) over a few lists."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from mlpmem_lightning.knn.targets import TargetSettings, _targets

    s = TargetSettings(index="ivfflat", k=k - 1, keep=keep)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ivf.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        it = ivf.self_search(k, 0, min(lists, ivf.nlist))
        while True:
            with record_function("search_list"):
                got = next(it, None)
            if got is None:
                break
            _, rows, dist, nbr = got
            with record_function("aggregate"):
                _targets(s, values, rows, dist, nbr)
        if ivf.device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if ivf.device.type == "cuda" else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=25))


# -- files -----------------------------------------------------------------------------------------
KEY_COLUMNS = ("gpu", "decoder_size", "memory_size", "compile", "batch", "seq_len", "rows", "backend", "mode",
               "search", "datastore_rows")  # what a row measured; the other columns are what it found


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
              work: Path, compile_sizes: list[str], profile: bool = False, **kw: Any) -> None:
    """Run the chosen sections, writing each section's CSV as soon as it is done."""
    out.mkdir(parents=True, exist_ok=True)
    prof, dev = (out if profile else None), ("cuda" if torch.cuda.is_available() else "cpu")

    def add(section: str, rows_: list[dict]) -> None:  # written as soon as measured: a killed run keeps them
        write_section(out, section, rows_)

    def train() -> None:  # uncompiled rows first: compilation is slow
        for size in sizes:
            add("train", bench_train([size], token_store, profile_dir=prof if size == sizes[-1] else None))
        for size in compile_sizes:
            add("train", bench_train([size], token_store, compile=True, profile_dir=prof))

    def targets() -> None:
        for n in rows:
            bench_targets([n], work, profile_dir=prof if n == rows[-1] else None, emit=lambda r: add("targets", [r]),
                          backends=kw.get("targets_backends", TARGET_BACKENDS))

    def generate() -> None:
        from mlpmem_lightning.bench.infer import bench_generate

        for s in kw.get("generate_sizes", ["12m"]):
            add("generate", bench_generate(s, kw.get("vocab", 16384), kw.get("datastore_rows", 10_000_000), dev,
                                           repeats=kw.get("repeats", 3)))

    def memory() -> None:
        from mlpmem_lightning.bench.infer import bench_memory_training

        for s in kw.get("memory_sizes", sizes):
            add("memory", bench_memory_training(s, kw.get("vocab", 16384), dev))

    run = {"train": train, "targets": targets, "generate": generate, "memory": memory}
    failed = []
    for section in sections:  # in the order given, so a time-limited run measures what matters first
        try:
            run[section]()
        except Exception:  # one broken section must not cost a lease the others' numbers
            log.exception("bench section %s failed", section)
            failed.append(section)
    if failed:
        from mlpmem_lightning.core.errors import UserError

        raise UserError(f"bench sections {', '.join(failed)} failed (traceback above); the others' rows are written")
    log.info("bench: %s", json.dumps(sections))
