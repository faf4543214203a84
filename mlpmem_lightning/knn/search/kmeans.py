"""Seeded k-means for the clustered IVF's centroids: ``faiss.Kmeans`` on a CPU, Lloyd's algorithm in torch on a GPU.

Why a k-means of our own: the faiss we ship is the faiss-cpu wheel, which has no GPU k-means. On an H200 host its
CPU k-means of 262144 sampled keys into 4096 lists (10 iterations, 5-8 threads) took 26-83 s per ``targets``
stage (key width 128-320), the largest part of the stage besides the search; that is ~7 TFLOP of products, well
under a second on the GPU. On a CPU faiss stays: there it is faster than torch.

Both run the same algorithm on the same sampled keys (``sample_rows``): ``nlist`` of them, drawn by the seed, are
the initial centroids; then ``niter`` rounds of assigning every key to its nearest centroid and moving each
centroid to the mean of its keys; a centroid left without keys takes half of another cluster (faiss's rule,
``split_empty``). faiss draws its own initial centroids, so the two give different centroids (both local optima):
the cache records which one made them (``implementation``).

The torch path gives the same bytes on every run on one kind of device (and library versions): IEEE float32
products (no TF32), argmin ties to the lower index, and cluster sums in float64 over the keys sorted by cluster
(``index_add_`` on CUDA adds with atomics in no fixed order, so its sums, hence the centroids, would vary by run).
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np
import torch

from mlpmem_lightning.knn.search.base import ieee_fp32_matmul

log = logging.getLogger(__name__)
PER_LIST, NITER = 64, 10  # sampled keys per list, iterations
BLOCK = 1 << 28  # float32 elements of one [keys, centroids] distance block (1 GiB)
EPS = 1 / 1024  # relative push apart of a split centroid and its copy (faiss's)
BACKENDS = ("auto", "faiss", "torch")


def sample_rows(n: int, nlist: int, seed: int, per_list: int = PER_LIST) -> np.ndarray:
    """The rows k-means trains on: ``per_list`` per list (all ``n`` if fewer), drawn by the seed, in row order."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, per_list * nlist), replace=False))


def initial_rows(n: int, nlist: int, seed: int) -> np.ndarray:
    """Which of ``n`` sampled keys start as the torch path's centroids (faiss also starts from a random subset)."""
    return np.random.default_rng([seed, 1]).choice(n, size=nlist, replace=False)


def implementation(device: str | torch.device = "cpu", backend: str = "auto") -> str:
    """The k-means ``train_centroids`` runs: ``faiss-cpu``, or ``torch-<device type>`` (``auto``: torch on CUDA)."""
    if backend not in BACKENDS:
        raise ValueError(f"k-means backend must be one of {BACKENDS}, got {backend!r}")
    dev = torch.device(device)
    if backend == "faiss" or (backend == "auto" and dev.type != "cuda"):
        return "faiss-cpu"
    return f"torch-{dev.type}"


def train_centroids(keys: np.ndarray, nlist: int, seed: int = 0, per_list: int = PER_LIST, niter: int = NITER,
                    device: str | torch.device = "cpu", backend: str = "auto") -> np.ndarray:
    """Seeded k-means centroids [nlist, d] float32 from ``per_list`` sampled keys per list (deterministic)."""
    n = len(keys)
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist={nlist} must be in [1, {n}] for {n} keys")
    sample = np.ascontiguousarray(np.asarray(keys[sample_rows(n, nlist, seed, per_list)], dtype=np.float32))
    kind, dev = implementation(device, backend), torch.device(device)
    start = time.monotonic()
    if kind == "faiss-cpu":
        centroids, where = faiss_kmeans(sample, nlist, niter, seed), f"{faiss.omp_get_max_threads()} CPU threads"
    else:
        centroids, where = torch_kmeans(sample, nlist, niter, seed, dev), f"{dev} (torch)"
    log.info("k-means: %d centroids from %d keys of width %d in %.1f s on %s", nlist, len(sample),
             sample.shape[1], time.monotonic() - start, where)
    return centroids


def faiss_kmeans(sample: np.ndarray, nlist: int, niter: int, seed: int) -> np.ndarray:
    """``faiss.Kmeans`` of all of ``sample`` (the points cap per centroid is set so faiss subsamples nothing)."""
    km = faiss.Kmeans(sample.shape[1], nlist, niter=niter, seed=seed, max_points_per_centroid=-(-len(sample) // nlist),
                      min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return km.centroids.copy()


def torch_kmeans(sample: np.ndarray, nlist: int, niter: int, seed: int, device: str | torch.device) -> np.ndarray:
    """Lloyd's k-means of ``sample`` [n, d] on ``device``: ``niter`` rounds from ``initial_rows``."""
    dev = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)).to(dev)
    cen = x[torch.from_numpy(initial_rows(len(x), nlist, seed)).to(dev)]
    splits = np.random.default_rng([seed, 2])  # the draws of split_empty
    with torch.autocast(dev.type, enabled=False), ieee_fp32_matmul(dev):
        for _ in range(niter):
            sums, counts = cluster_sums(x, nearest(x, cen), nlist)
            cen = torch.where(counts[:, None] > 0, (sums / counts[:, None].clamp_min(1)).float(), cen)
            cen = split_empty(cen, counts.cpu().numpy(), splits)
    return cen.cpu().numpy()


def nearest(x: torch.Tensor, cen: torch.Tensor) -> torch.Tensor:
    """Each row's nearest centroid (ties: the lower index), from ``|x|^2 - 2 x.c + |c|^2`` without ``|x|^2``:
    it is the same for every centroid of a row, and adding it would only round away low bits of the rest.
    Blocks of at most ``BLOCK`` distances; run it under ``ieee_fp32_matmul``."""
    cn = cen.square().sum(1)[None]
    rows = max(1, BLOCK // len(cen))
    return torch.cat([torch.addmm(cn, xb, cen.T, alpha=-2).argmin(1) for xb in x.split(rows)])


def cluster_sums(x: torch.Tensor, labels: torch.Tensor, nlist: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 sums [nlist, d] of each cluster's rows, and counts [nlist]: differences of a running sum over the
    rows sorted by cluster, so the additions happen in one fixed order on every run (unlike ``index_add_`` on CUDA).
    """
    counts = torch.bincount(labels, minlength=nlist)
    ordered = x[torch.argsort(labels, stable=True)].double()
    run = torch.cat([ordered.new_zeros(1, x.shape[1]), ordered.cumsum(0)])
    ends = counts.cumsum(0)
    return run[ends] - run[ends - counts], counts


def split_empty(cen: torch.Tensor, counts: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Centroids where each one without keys takes half of another cluster, as faiss's ``split_clusters`` does.

    Why: an empty centroid would stay where it is, a wasted list. The cluster to split is drawn with odds by its size
    minus one (one-key clusters are never split); its centroid and the copy are pushed apart by ``EPS`` relative, in
    opposite directions per coordinate, and share its keys in the counts that later draws see.
    """
    empty = np.flatnonzero(counts == 0)
    if len(empty) == 0:
        return cen
    out, counts = cen.cpu().numpy().copy(), counts.astype(np.int64)
    push = np.where(np.arange(out.shape[1]) % 2 == 0, EPS, -EPS).astype(np.float32)
    for ci in empty:
        odds = np.maximum(counts - 1, 0).astype(np.float64)
        if odds.sum() == 0:
            break
        cj = rng.choice(len(counts), p=odds / odds.sum())
        out[ci], out[cj] = out[cj] * (1 + push), out[cj] * (1 - push)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
    return torch.from_numpy(out).to(cen.device)
