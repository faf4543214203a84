"""The paper's speed claim (decoder + MLP Memory runs 1.3x faster than a decoder-only model), measured.

The claim compares models of equal total size: a decoder of about N parameters against a decoder of about N/2
plus a memory of about N/2. ``bench_speed_claim`` picks, for a ladder decoder of N total parameters, the ladder
decoder whose total is closest to N/2 and the memory rung whose parameters (at that decoder's width) are closest
to N/2, then times greedy generation of both with ``generate.generate`` exactly as ``bench_generate`` does
(time to first token as a ``max_new_tokens=1`` call, throughput over the full call, medians over ``repeats``).
Random weights: speed depends on shapes only.
"""

from __future__ import annotations

import statistics

import torch

from mlpmem_lightning.bench.infer import _info, _seconds
from mlpmem_lightning.inference.generate import generate, memory_logprobs
from mlpmem_lightning.models.decoder import build_decoder
from mlpmem_lightning.models.ladder import LADDER, MEMORY_LADDER, get_size, total_params
from mlpmem_lightning.models.memory import build_memory, memory_config, memory_params


def half_split(decoder_size: str, vocab: int) -> tuple[str, str, int, int, int]:
    """(half decoder, memory rung, N, half decoder's total, memory's total) with both halves closest to N/2."""
    n = total_params(get_size(decoder_size), vocab)
    half = min(LADDER, key=lambda s: abs(total_params(s, vocab) - n / 2))
    mem = min(MEMORY_LADDER, key=lambda m: abs(memory_params(memory_config(m.name, half.d_model, vocab)) - n / 2))
    return half.name, mem.name, n, total_params(half, vocab), memory_params(memory_config(mem.name, half.d_model,
                                                                                           vocab))


def bench_speed_claim(decoder_size: str, vocab: int, device: str, batches: tuple[int, ...] = (1, 32),
                      prompt_len: int = 256, new_tokens: int = 256, lam: float = 0.25,
                      dtype: torch.dtype = torch.bfloat16, repeats: int = 3, seed: int = 0) -> list[dict]:
    """Rows for the full decoder and for half decoder + memory (mixed at ``lam``), with their ratio."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    half, mem_name, n, n_half, n_mem = half_split(decoder_size, vocab)
    full_net = build_decoder(get_size(decoder_size), vocab).to(dev).eval().requires_grad_(False)
    half_net = build_decoder(get_size(half), vocab).to(dev).eval().requires_grad_(False)
    mem = build_memory(mem_name, get_size(half).d_model, vocab).to(dev).eval().requires_grad_(False)
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    setups = [("decoder", "", decoder_size, "", n, full_net, None, 0.0),
              ("half+memory", "", half, mem_name, n_half + n_mem, half_net, memory_logprobs(mem), lam),
              ("decoder", "again", decoder_size, "", n, full_net, None, 0.0)]  # drift over the run shows as a gap
    rows = []
    for mode, search, dec, mem_size, params, net, other, lam_ in setups:
        for b in batches:
            prompts = prompt.repeat(b, 1).to(dev)

            def call(k: int) -> None:
                with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
                    generate(net, prompts, k, other, lam_)

            call(new_tokens)  # warm-up
            ttft = statistics.median(_seconds(lambda: call(1), dev) for _ in range(repeats))
            total = statistics.median(_seconds(lambda: call(new_tokens), dev) for _ in range(repeats))
            rows.append({"bench": "speed_claim", **_info(dev, dtype), "target_params": n, "mode": mode,
                         "search": search,
                         "decoder_size": dec, "memory_size": mem_size, "params_total": params, "batch": b,
                         "prompt_len": prompt_len, "new_tokens": new_tokens, "ttft_ms": 1e3 * ttft,
                         "tokens_per_s": b * new_tokens / total})
    for b in batches:  # against the mean of the full decoder measured first and last
        base = [r for r in rows if r["mode"] == "decoder" and r["batch"] == b]
        tps, ttft = statistics.mean(r["tokens_per_s"] for r in base), statistics.mean(r["ttft_ms"] for r in base)
        for r in rows:
            if r["batch"] == b:
                r["speed_vs_full_decoder"] = r["tokens_per_s"] / tps
                r["ttft_vs_full_decoder"] = r["ttft_ms"] / ttft
    return rows
