"""The ``train`` section of `mlpmem bench`: decoder training through the real path, against the in-run reference.

``DecoderLM`` is fitted in a Lightning ``Trainer`` (bf16-mixed) and timed by CUDA events at each batch end, so the
data loading, Lightning's hooks, logging and the optimizer step are all in the step time. The plain-PyTorch
reference of the same shapes and FLOP formula (``bench.reference``) is measured right after, in the same process.

A ``--profile`` run fits the last size once more for a few steps under two profilers: Lightning's
``SimpleProfiler`` (host seconds per hook: where the Python time of a step goes) and ``torch.profiler`` (kernels,
and how much of a step the GPU is busy). A step slower than its GPU time is host-bound; one that is not does
more GPU work than the reference.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mlpmem_lightning.bench.timing import gpu_name, peak_flops, sync

log = logging.getLogger(__name__)

TRAIN_MODES = {"eager": (False, False), "compiled": (True, False), "graph": (True, True)}  # (compile, cuda_graph)


class StepTimer(L.Callback):
    """CUDA events at each batch end; per-step times are the gaps after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.events: list[Any] = []
        self.wall: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.events.append(ev)
        self.wall.append(time.perf_counter())

    def step_seconds(self) -> list[float]:
        w = self.warmup
        if self.events:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.events[w:], self.events[w + 1:])]
        return [b - a for a, b in zip(self.wall[w:], self.wall[w + 1:])]


class KernelProfile(L.Callback):
    """``torch.profiler`` over ``steps`` training steps from step ``start``; writes the kernel and host tables and
    a first line with the step's wall time and the GPU's busy time per step (the sum of its kernels)."""

    def __init__(self, start: int, steps: int, path: Path) -> None:
        self.start, self.steps, self.path = start, steps, path
        self.prof: Any = None
        self.t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            sync()
            self.prof = profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.prof is None or trainer.global_step != self.start + self.steps:
            return
        sync()
        wall_ms = (time.perf_counter() - self.t0) * 1e3 / self.steps
        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / self.steps
        head = (f"# {self.steps} steps of the fit under the profiler: {wall_ms:.2f} ms wall per step, "
                f"{gpu_ms:.2f} ms of GPU kernels per step ({gpu_ms / wall_ms:.0%} busy)\n")
        by_gpu = events.table(sort_by="self_device_time_total", row_limit=25) if gpu_ms else ""
        by_host = events.table(sort_by="self_cpu_time_total", row_limit=25)
        self.path.write_text(head + "\n## by GPU time\n" + by_gpu + "\n## by host time\n" + by_host)
        self.prof = None


def _trainer(max_steps: int, callbacks: list, log_every_n_steps: int, profiler: Any = None) -> L.Trainer:
    cuda = torch.cuda.is_available()
    return L.Trainer(accelerator="auto", devices=1, precision="bf16-mixed" if cuda else "32", max_steps=max_steps,
                     limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                     gradient_clip_val=1.0, log_every_n_steps=log_every_n_steps, profiler=profiler)


def bench_train(sizes: list[str], token_store: str, seq_len: int = 256, batch: int = 64, steps: int = 30,
                warmup: int = 10, mode: str = "eager", num_workers: int = 4,
                profile_dir: Path | None = None, reference: bool = True, log_every_n_steps: int = 50) -> list[dict]:
    """tokens/s and MFU of ``DecoderLM`` training at each size (one Lightning fit of warmup + steps), and the
    plain-PyTorch reference (``bench.reference``) of the same shapes in the same ``mode``, measured right after.

    ``mode``: ``eager``; ``compiled`` (``torch.compile``); ``graph`` (compiled, and the step captured as a CUDA
    graph: ``DecoderLM(cuda_graph=True)``; the reference captures its whole step, optimizer included).
    ``log_every_n_steps``: the Trainer's (the shipped GPU trainer's is 50); 1 shows what logging every step costs."""
    from mlpmem_lightning.bench.reference import reference_tokens_per_s
    from mlpmem_lightning.data.datamodule import LMDataModule
    from mlpmem_lightning.lightning.decoder_lm import DecoderLM
    from mlpmem_lightning.models.ladder import flops_per_token, get_size, total_params

    compile, cuda_graph = TRAIN_MODES[mode]
    rows, gpu = [], gpu_name()
    for size in sizes:
        dm = LMDataModule(token_store, seq_len=seq_len, batch_size=batch, num_workers=num_workers)
        model = DecoderLM(size=size, max_tokens=None, compile=compile, cuda_graph=cuda_graph)
        timer = StepTimer(warmup)
        _trainer(warmup + steps + 1, [timer], log_every_n_steps).fit(model, dm)
        times = timer.step_seconds()
        step = statistics.median(times)
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
                     "log_every_n_steps": log_every_n_steps,
                     "step_ms": round(step * 1e3, 3), "tokens_per_s": round(tps),
                     # the mean counts the logging steps' host-device syncs, which the median leaves out
                     "tokens_per_s_mean": round(batch * seq_len / statistics.mean(times)),
                     "model_tflops": round(fpt * tps / 1e12, 2), "mfu": round(fpt * tps / peak, 4) if peak else None,
                     "reference_tokens_per_s": round(ref) if ref else None,
                     "reference_step_ms": round(batch * seq_len / ref * 1e3, 3) if ref else None,
                     "reference_mfu": round(fpt * ref / peak, 4) if ref and peak else None,
                     "vs_reference": round(tps / ref, 3) if ref else None})
        log.info("train %s", rows[-1])
        if profile_dir is not None and size == sizes[-1]:
            _profile_fit(size, dm, mode, warmup, log_every_n_steps, profile_dir)
    return rows


def _profile_fit(size: str, dm, mode: str, warmup: int, log_every_n_steps: int, out: Path, steps: int = 5) -> None:
    """One more short fit of ``size`` under both profilers: ``profile_fit_<size>_<mode>.txt`` (kernels and host
    ops of ``steps`` steps after ``warmup``) and ``profile_fit_<size>_<mode>_hooks.txt`` (host seconds per
    Lightning hook over the whole fit, compilation included in its first steps)."""
    from lightning.pytorch.profilers import SimpleProfiler

    from mlpmem_lightning.lightning.decoder_lm import DecoderLM

    compile, cuda_graph = TRAIN_MODES[mode]
    name = f"profile_fit_{size}_{mode}"
    model = DecoderLM(size=size, max_tokens=None, compile=compile, cuda_graph=cuda_graph)
    hooks = SimpleProfiler(dirpath=out, filename=f"{name}_hooks")
    kernels = KernelProfile(warmup, steps, out / f"{name}.txt")
    _trainer(warmup + steps + 1, [kernels], log_every_n_steps, profiler=hooks).fit(model, dm)
