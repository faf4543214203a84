"""Time the clustered IVF's k-means: faiss-cpu on the host's cores against our torch Lloyd on a device.

    PYTHONPATH=$PWD python scripts/bench_kmeans.py --device cuda --n 262144 --nlist 4096 --d 64,128,256,320 \
        [--niter 10] [--out kmeans.csv]

For each key width: ``n`` random keys rounded to float16 (Gaussian blobs, roughly like hidden states), then
``faiss_kmeans`` on the CPU and ``torch_kmeans`` on ``--device`` over all of them (what ``train_centroids`` runs on
its sample), each with its objective: the sum of squared distances to the nearest centroid, in float64. The torch
time includes copying the keys to the device and the centroids back; the device is warmed up first. Prints a CSV
(and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from mlpmem_lightning.knn.search.kmeans import NITER, faiss_kmeans, torch_kmeans

FIELDS = ["d", "n", "nlist", "niter", "kmeans", "device", "cpu_threads", "seconds", "objective", "vs_faiss"]


def keys(n: int, d: int, seed: int) -> np.ndarray:
    """[n, d] float32 values of float16 keys: unit noise around 1024 random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1024, d), dtype=np.float32) * 2
    return (centres[rng.integers(0, 1024, n)] + rng.standard_normal((n, d), dtype=np.float32)).astype(
        np.float16).astype(np.float32)


def objective(x: np.ndarray, centroids: np.ndarray, device: torch.device) -> float:
    """Sum over keys of the squared distance to the nearest centroid, in float64 on ``device``."""
    c = torch.from_numpy(centroids).to(device, torch.float64)
    cn, total = c.square().sum(1), 0.0
    for block in torch.from_numpy(x).split(max(1, (1 << 26) // len(c))):
        xb = block.to(device, torch.float64)
        dist = torch.addmm(cn[None] + xb.square().sum(1)[:, None], xb, c.T, alpha=-2)
        total += float(dist.min(1).values.clamp_min(0).sum())
    return total


def timed(run, device: torch.device) -> tuple[np.ndarray, float]:
    """(result, seconds) of ``run()``, synchronizing a CUDA device on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def bench(d: int, n: int, nlist: int, niter: int, device: torch.device, seed: int) -> list[dict]:
    x = keys(n, d, seed)
    rows = []
    runs = (("faiss-cpu", "cpu", lambda: faiss_kmeans(x, nlist, niter, seed)),
            (f"torch-{device.type}", str(device), lambda: torch_kmeans(x, nlist, niter, seed, device)))
    for name, where, run in runs:
        centroids, seconds = timed(run, device)
        rows.append({"d": d, "n": n, "nlist": nlist, "niter": niter, "kmeans": name, "device": where,
                     "cpu_threads": faiss.omp_get_max_threads() if name == "faiss-cpu" else "",
                     "seconds": round(seconds, 3), "objective": f"{objective(x, centroids, device):.6e}"})
    for row in rows:
        row["vs_faiss"] = round(float(row["objective"]) / float(rows[0]["objective"]), 4)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=262144)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--d", default="64,128,256,320", help="key widths, comma-separated")
    ap.add_argument("--niter", type=int, default=NITER)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the CSV here")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch_kmeans(keys(4 * 64, 64, 1), 4, 2, 0, device)  # warm-up: CUDA context, cuBLAS handles
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS)
    writer.writeheader()
    print(text.getvalue(), end="", flush=True)
    for d in (int(w) for w in args.d.split(",")):
        start = text.tell()
        writer.writerows(bench(d, args.n, args.nlist, args.niter, device, args.seed))
        print(text.getvalue()[start:], end="", flush=True)
    if args.out:
        args.out.write_text(text.getvalue())


if __name__ == "__main__":
    main()
