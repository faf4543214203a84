"""Speed benchmarks behind `mlpmem bench` (issue #6): generation and MLP Memory training steps.

Randomly initialised networks throughout: speed depends on shapes, not on weights, so a
benchmark needs no trained artifact and can be run at any rung of the ladder. Both functions
time the framework's own code (``generate.generate`` with its helpers; ``MemoryLM.training_step``)
rather than re-implementations, so the numbers describe what a user actually runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mlpmem_lightning.bench.synthetic import synthetic_datastore
from mlpmem_lightning.bench.timing import sync
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.inference.generate import generate, knn_logprobs, memory_logprobs
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.search import ClusteredIVF, TorchExact
from mlpmem_lightning.knn.search.clustered import default_nlist
from mlpmem_lightning.knn.settings import KNN
from mlpmem_lightning.models.decoder import build_decoder, context_length
from mlpmem_lightning.models.ladder import get_size, matched_memory
from mlpmem_lightning.models.memory import build_memory


def _seconds(fn: Callable[[], object], dev: torch.device) -> float:
    """Wall time of ``fn`` with the device drained before and after (CUDA launches are asynchronous)."""
    sync(dev)
    start = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - start


def _info(dev: torch.device, dtype: torch.dtype) -> dict:
    cuda = dev.type == "cuda"
    return {"gpu": torch.cuda.get_device_name(dev) if cuda else "cpu",
            "dtype": str(dtype).removeprefix("torch.") if cuda else "float32"}




def bench_generate(decoder_size: str, vocab: int, datastore_rows: int, device: str, batches: tuple[int, ...] = (1, 32),
                   prompt_len: int = 256, new_tokens: int = 256, k: int = KNN.k, temperature: float = KNN.temperature,
                   nlist: int | None = None, nprobe: int = KNN.nprobe, dtype: torch.dtype = torch.bfloat16,
                   repeats: int = 3, seed: int = 0, trace: dict | None = None, work: str | Path | None = None
                   ) -> list[dict]:
    """Greedy generation speed of decoder, decoder + matched MLP Memory (λ 0.5) and kNN-LM (λ 0.25).

    ``generate`` has no hook between prefill and decoding, so time to first token is timed as a
    separate ``max_new_tokens=1`` call (prefill + one mixture + argmax) and throughput as
    batch·new_tokens over the full call (prefill included); each is a median over ``repeats`` after
    one full warm-up call. Searchers are built one at a time (build not timed) and freed after
    their rows, so the device holds one copy of the keys. The IVF rows use ``ClusteredIVF``. The
    datastore is a synthetic one (``bench.synthetic``), written in a temporary folder under ``work``.
    ``trace``, if given, receives the network, memory, prompts and last generated tokens per (mode, batch).
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    size, mem_name = get_size(decoder_size), matched_memory(decoder_size).name
    net = build_decoder(size, vocab).to(dev).eval().requires_grad_(False)
    if prompt_len + new_tokens > context_length(net):
        raise UserError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the decoder's context "
                        f"{context_length(net)}")
    mem = build_memory(mem_name, size.d_model, vocab).to(dev).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory(dir=work) as tmp:  # keys read into memory: what a searcher loads anyway
        ds = Datastore(synthetic_datastore(Path(tmp) / "ds", datastore_rows, size.d_model, vocab, seed))
        keys, values = np.array(ds.keys), torch.from_numpy(np.asarray(ds.values, dtype=np.int64)).to(dev)
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    prompts = {b: prompt.repeat(b, 1).to(dev) for b in batches}

    def knn(search: str):
        if search == "exact":
            searcher = TorchExact(keys, dev)
        else:
            n_lists = nlist or default_nlist(datastore_rows)
            searcher = ClusteredIVF(keys, nlist=n_lists, nprobe=min(nprobe, n_lists), device=str(dev))
        return knn_logprobs(searcher, values, vocab, k, temperature), searcher  # searches run outside autocast

    modes = [("decoder", "", lambda: (None, None)), ("memory", "", lambda: (memory_logprobs(mem), None)),
             ("knn", "ivf", lambda: knn("ivf")), ("knn", "exact", lambda: knn("exact")),
             ("decoder", "again", lambda: (None, None))]  # a control: drift over the run shows up as a gap
    lams = {"decoder": 0.0, "memory": 0.5, "knn": 0.25}
    if trace is not None:
        trace.update(net=net, memory=mem, prompts=prompts, tokens={})
    rows = []
    for mode, search, make in modes:
        built = make()
        other, searcher = built
        for b in batches:
            out: list[torch.Tensor] = []

            def call(n: int) -> None:
                with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
                    out[:] = [generate(net, prompts[b], n, other, lams[mode])]

            call(new_tokens)  # warm-up: kernels, allocator, cuBLAS workspaces
            ttft = statistics.median(_seconds(lambda: call(1), dev) for _ in range(repeats))
            total = statistics.median(_seconds(lambda: call(new_tokens), dev) for _ in range(repeats))
            tps = b * new_tokens / total
            if trace is not None:
                trace["tokens"][(mode if not search else f"{mode}-{search}", b)] = out[0].cpu()
            rows.append({"bench": "generate", **_info(dev, dtype), "decoder_size": decoder_size, "mode": mode,
                         "memory_size": mem_name if mode == "memory" else "",
                         "datastore_rows": datastore_rows if mode == "knn" else 0, "search": search,
                         "search_fallback_rows": getattr(searcher, "stats", {}).get("fallback_rows", 0),
                         "batch": b, "prompt_len": prompt_len, "new_tokens": new_tokens, "ttft_ms": 1e3 * ttft,
                         "tokens_per_s": tps, "total_s": total})
        other = searcher = built = None  # free the searcher's device copy of the keys
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for b in batches:  # against the mean of the decoder measured first and last
        base = statistics.mean(r["tokens_per_s"] for r in rows if r["mode"] == "decoder" and r["batch"] == b)
        for r in rows:
            if r["batch"] == b:
                r["speed_vs_decoder"] = r["tokens_per_s"] / base
    return rows


MEMORY_TRAIN_MODES = {"eager": (False, False), "compiled": (True, False), "graph": (True, True)}  # compile, graph


def bench_memory_training(decoder_size: str, vocab: int, device: str, batch: int = 64, seq_len: int = 256,
                          steps: int = 30, warmup: int = 5, keep: int = 128, dtype: torch.dtype = torch.bfloat16,
                          seed: int = 0, train_modes: tuple[str, ...] = ("eager",),
                          profile_dir: Path | None = None) -> list[dict]:
    """Tokens/s of one MLP Memory optimizer step, ``online`` and ``offline``, as ``mlpmem fit`` runs it.

    The step is ``MemoryLM.training_step`` itself (its ``keys``: frozen decoder up to the tapped FFN
    input, or the given keys; the memory; ``memory_loss``) under autocast as with ``bf16-mixed``,
    then backward, AdamW step and LR-schedule step as Lightning's automatic optimisation does.
    Outside a Trainer: ``MemoryLM`` needs a decoder on disk (a random one is saved to a temporary
    directory), ``tokens_per_step`` is set by hand (normally ``setup``), its ``self.log`` calls are
    no-ops (supported by Lightning for trainer-less steps), and ``configure_optimizers`` is called
    with a stand-in carrying ``trainer.max_steps``. Offline keys are on the device already (disk
    and host-to-device time not counted). ``step_ms`` is the median over ``steps`` after ``warmup``.
    ``train_modes``: ``eager``; ``compiled`` (memory and loss compiled together: ``MemoryLM.prepare_train_step``);
    ``graph`` (compiled, and the whole step, decoder forward and AdamW included, one CUDA graph: the module's own
    ``GraphedTrainStep`` over ``MemoryLM._step_losses``, as ``--model.cuda_graph true`` builds it).
    """
    if keep > vocab:
        raise UserError(f"keep {keep} exceeds the vocabulary {vocab}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    size, mem_name = get_size(decoder_size), matched_memory(decoder_size).name
    g = torch.Generator(device=dev).manual_seed(seed)
    ids = torch.randint(0, vocab + 1 - keep, (batch, seq_len, 1), generator=g, device=dev)
    data = {"input_ids": torch.randint(0, vocab, (batch, seq_len), generator=g, device=dev),
            "labels": torch.randint(0, vocab, (batch, seq_len), generator=g, device=dev),
            "keys": torch.randn(batch, seq_len, size.d_model, generator=g, device=dev),
            "knn_ids": ids + torch.arange(keep, device=dev),  # distinct within a row, as targets.py stores them
            "knn_probs": torch.softmax(torch.randn(batch, seq_len, keep, generator=g, device=dev), -1)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_decoder(size, vocab).save_pretrained(tmp)
        for train_mode in train_modes:
            for mode in ("online", "offline"):
                rows.append(_memory_row(tmp, mem_name, mode, train_mode, data, dev, dtype, warmup, steps, profile_dir) |
                            {"decoder_size": decoder_size, "batch": batch, "seq_len": seq_len, "keep": keep})
    return rows


def _profile_steps(step: Callable[[int], None], dev: torch.device, path: Path, n: int = 5) -> None:
    """Profiler table (device time first) of ``n`` more steps, the way ``bench_train --profile`` writes one."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(n):
            step(i)
        sync(dev)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total" if dev.type == "cuda" else "cpu_time_total",
                                              row_limit=30))


def _memory_row(decoder_dir: str, mem_name: str, mode: str, train_mode: str, data: dict, dev: torch.device,
                dtype: torch.dtype, warmup: int, steps: int, profile_dir: Path | None = None) -> dict:
    from mlpmem_lightning.lightning.memory_lm import MemoryLM
    from mlpmem_lightning.lightning.step_graph import GraphedTrainStep

    compile, graph = MEMORY_TRAIN_MODES[train_mode]
    graph = graph and dev.type == "cuda"
    module = MemoryLM(decoder_dir, size=mem_name, mode=mode, cuda_graph=graph).to(dev).train()
    module.decoder.to(dev)  # not a submodule: moved by MemoryLM.setup in a real run
    module.tokens_per_step = data["input_ids"].numel()
    module.prepare_train_step(compile and dev.type == "cuda")
    stand_in = SimpleNamespace(hparams=module.hparams, lr=module.lr, optim=module.optim, memory=module.memory,
                               device=dev, trainer=SimpleNamespace(max_steps=warmup + steps))
    opt_cfg = MemoryLM.configure_optimizers(stand_in)
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]

    def clip_and_step() -> None:  # what StepGraphHooks._clip_and_step does with --trainer.gradient_clip_val 1
        torch.nn.utils.clip_grad_norm_(list(module.memory.parameters()), 1.0)
        opt.step()

    if graph:
        module.step_graph = GraphedTrainStep(module.memory, module._step_losses, clip_and_step)

    def step(i: int) -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
            loss = module.training_step(data, i)
        if not graph:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_and_step()
        sched.step()

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        times = [_seconds(lambda: step(i), dev) for i in range(warmup + steps)][warmup:]
        if profile_dir is not None:
            _profile_steps(step, dev, profile_dir / f"profile_memory_{mem_name}_{mode}_{train_mode}.txt")
    ms = 1e3 * statistics.median(times)
    return {"bench": "memory_train", **_info(dev, dtype), "memory_size": mem_name, "mode": mode,
            "train_mode": train_mode, "tokens_per_s": module.tokens_per_step / (ms / 1e3), "step_ms": ms}
