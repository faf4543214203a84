"""Peak memory of one MLP Memory training step with each loss: dense target, sparse, fused.

Not used in training: it is how the sparse and fused losses of :mod:`mlpmem_lightning.lightning.losses` were
chosen, and it reproduces the README's peak-memory table::

    python -m mlpmem_lightning.bench.memory_peak '{"vocab": 32768, "dtype": "bfloat16"}'
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.lightning.losses import fused_memory_loss, memory_loss, sparse_targets

LOSS_VARIANTS = ("dense", "sparse", "fused")


def _dense_loss(logits: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                alpha: float) -> torch.Tensor:
    """The naive baseline: scatter the targets into a dense [T, V] tensor and KL against it."""
    i, p = sparse_targets(ids, probs)
    target = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, i, p)
    logq = F.log_softmax(logits.float(), dim=-1)
    kl = F.kl_div(logq, target, reduction="batchmean")
    return alpha * kl + (1 - alpha) * F.nll_loss(logq, labels)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_memory_step(variant: str, size: str = "mem-25m", tokens: int = 8192, vocab: int = 32768, k: int = 128,
                     device: str = "auto", dtype: str = "float32", chunk_size: int = 1024) -> dict:
    """Peak memory of one training step (forward + backward) above what model and batch already hold.

    CUDA: ``max_memory_allocated`` after a warm-up step (cuBLAS workspaces, parameter gradients
    allocated once). CPU: max RSS (``getrusage``) minus the RSS just before the step; run each
    variant in a fresh process (:func:`compare_peak_memory`), since max RSS only ever grows.
    """
    from mlpmem_lightning.models.memory import build_memory

    if variant not in LOSS_VARIANTS:
        raise UserError(f"unknown loss variant {variant!r}: choose one of {', '.join(LOSS_VARIANTS)}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto"
                       else device)
    torch.manual_seed(0)
    model = build_memory(size, input_dim=_width(size), vocab_size=vocab).to(dev, getattr(torch, dtype))
    h = torch.randn(tokens, model.cfg.input_dim, device=dev, dtype=getattr(torch, dtype))
    ids = (torch.randint(0, vocab, (tokens, 1), device=dev) + torch.arange(k, device=dev)) % vocab  # distinct
    probs = torch.softmax(torch.randn(tokens, k, device=dev), -1).half()
    labels = torch.randint(0, vocab, (tokens,), device=dev)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if variant == "fused":
            loss = fused_memory_loss(model.features(h), model.head_w, ids, probs, labels, 0.5, chunk_size)["loss"]
        elif variant == "sparse":
            loss = memory_loss(model(h), ids, probs, labels, 0.5)["loss"]
        else:
            loss = _dense_loss(model(h), ids, probs, labels, 0.5)
        loss.backward()
        return loss.item()

    if dev.type == "cuda":
        step()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base, start = torch.cuda.memory_allocated(dev), time.perf_counter()
        loss = step()
        torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        peak, method = torch.cuda.max_memory_allocated(dev) - base, "cuda.max_memory_allocated"
    else:
        base, start = _rss_bytes(), time.perf_counter()
        loss = step()
        seconds = time.perf_counter() - start
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, "getrusage max RSS delta"
    logits_bytes = tokens * vocab * 4
    return {"variant": variant, "size": size, "tokens": tokens, "vocab": vocab, "k": k, "dtype": dtype,
            "device": str(dev), "method": method, "peak_bytes": int(peak), "peak_in_TxV_fp32": peak / logits_bytes,
            "step_seconds": seconds, "loss": loss}


def _width(size: str) -> int:
    from mlpmem_lightning.models.ladder import get_memory_size

    return get_memory_size(size).d_model


def compare_peak_memory(**kwargs) -> list[dict]:
    """:func:`peak_memory_step` of every variant, each in a fresh Python process."""
    rows = []
    for variant in LOSS_VARIANTS:
        code = ("import json,sys; from mlpmem_lightning.bench.memory_peak import peak_memory_step as f; "
                f"print(json.dumps(f({variant!r}, **json.loads(sys.argv[1]))))")
        out = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], check=True, capture_output=True,
                             text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    for row in compare_peak_memory(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}")):
        print(json.dumps(row))
