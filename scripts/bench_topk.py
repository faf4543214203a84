"""Time the clustered search's per-list top-k against a two-stage (blockwise) top-k on the same score block.

    PYTHONPATH=$PWD python scripts/bench_topk.py --device cuda [--rows 1431] [--cols 187520] [--k 1025] \
        [--blocks 4,8,16,32] [--out topk.csv]

Why: in a 12M-row targets run on the H200 `topk` over each [queries x ~190k candidates] score block is 35% of the
search's device time (`analysis/bench-h200/profile_targets_12m_h200.txt`), the radix select making several passes
over the block. A blockwise top-k (the k smallest of each of B column blocks, then the k smallest of those B*k)
finds the same k smallest values; whether it is faster is a question for the GPU, so this measures it beside the
one-stage call, on the shapes the 12M-row run has (`SCORES` // candidates rows, the candidate budget, k + 1).

Scores are squared distances of random Gaussian points (float32, >= 0, few exact ties). Each variant is checked
against the one-stage values (sorted, equal), and timed by CUDA events: median of ``--repeats`` after 3 warm-ups.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from pathlib import Path

import torch


def one_stage(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return dist.topk(k, dim=1, largest=False, sorted=False)


def two_stage(dist: torch.Tensor, k: int, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest per row from the k smallest of each of ``blocks`` column blocks (padded with +inf)."""
    rows, cols = dist.shape
    width = -(-cols // blocks)
    if width * blocks != cols:
        dist = torch.nn.functional.pad(dist, (0, width * blocks - cols), value=float("inf"))
    v, j = dist.view(rows, blocks, width).topk(min(k, width), dim=2, largest=False, sorted=False)
    j = j + torch.arange(blocks, device=dist.device)[None, :, None] * width
    v2, pick = v.reshape(rows, -1).topk(k, dim=1, largest=False, sorted=False)
    return v2, j.reshape(rows, -1).gather(1, pick)


def scores(rows: int, cols: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(rows, d, device=device, generator=g)
    c = torch.randn(cols, d, device=device, generator=g)
    return torch.cdist(q, c).square()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` (CUDA events on a GPU, wall clock elsewhere)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--rows", type=int, default=1431)
    p.add_argument("--cols", type=int, default=187520)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--k", type=int, default=1025)
    p.add_argument("--blocks", default="4,8,16,32")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    dev = torch.device(a.device)
    dist = scores(a.rows, a.cols, a.d, dev)
    ref = one_stage(dist, a.k)[0].sort(1).values
    base = timed(lambda: one_stage(dist, a.k), dev, a.repeats)
    rows = [{"variant": "one-stage topk", "blocks": 1, "seconds": base, "vs_one_stage": 1.0, "same_values": True}]
    for b in (int(x) for x in a.blocks.split(",")):
        v, j = two_stage(dist, a.k, b)
        same = bool(torch.equal(v.sort(1).values, ref) and torch.equal(dist.gather(1, j), v))
        s = timed(lambda b=b: two_stage(dist, a.k, b), dev, a.repeats)
        rows.append({"variant": "two-stage topk", "blocks": b, "seconds": s, "vs_one_stage": s / base,
                     "same_values": same})
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["device", "rows", "cols", "k", "variant", "blocks", "seconds", "vs_one_stage",
                             "same_values"])
    w.writeheader()
    for r in rows:
        w.writerow({"device": name, "rows": a.rows, "cols": a.cols, "k": a.k, **r,
                    "seconds": f"{r['seconds']:.5f}", "vs_one_stage": f"{r['vs_one_stage']:.3f}"})
    print(buf.getvalue(), end="")
    if a.out:
        a.out.write_text(buf.getvalue())


if __name__ == "__main__":
    main()
