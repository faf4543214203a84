"""How far the clustered IVF's old probe sets (before cb887aa) were from the fixed ones, on a real datastore.

For each list: is its probe set that of the nearest centroids (float64)? And recall@k against exact search for
a sample of the datastore's own keys as queries (the targets' self-search; the query itself is dropped from both).
    python scripts/probe_sets_check.py DATASTORE [--nprobe 16] [--k 1024] [--queries 2000]
"""
from __future__ import annotations

import argparse

import faiss
import numpy as np
import torch

from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.search.base import composite, smallest
from mlpmem_lightning.knn.search.clustered import ClusteredIVF, cached_centroids, default_nlist


class OldClusteredIVF(ClusteredIVF):
    """The defective probe-set choice (clamped |c|^2 - 2 x.c, ties to the lower index); search otherwise unchanged."""

    def nearest(self, x: torch.Tensor, p: int, sort: bool = False) -> torch.Tensor:
        if not sort:
            return super().nearest(x, p)
        dist = torch.addmm(self.centroids.square().sum(1)[None], x, self.centroids.T, alpha=-2).clamp_min(0)
        return smallest(composite(dist, torch.arange(self.nlist, device=x.device).expand_as(dist)), p) & 0xFFFFFFFF


def recall(s: ClusteredIVF, rows: np.ndarray, exact: np.ndarray, k: int) -> float:
    """The sampled rows searched as queries: each lands in its own list, so this is the self-search's result for
    those rows, without searching every other row of the datastore too."""
    got = s.search(torch.from_numpy(np.asarray(s.source[rows], dtype=np.float32)), k + 1)[1].tolist()
    return float(np.mean([len(set(g) - {r} & set(e) - {r}) / k for r, g, e in zip(rows.tolist(), got, exact)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datastore")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--k", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=2000)
    a = ap.parse_args()
    ds = Datastore(a.datastore)
    keys = np.asarray(ds.keys, np.float32)
    nlist = default_nlist(len(ds))
    centroids = cached_centroids(ds.path, ds.keys, nlist, fingerprint=ds.fingerprint)
    s, o = (cls(ds.keys, nlist, a.nprobe, centroids=centroids) for cls in (ClusteredIVF, OldClusteredIVF))
    cen = s.centroids.numpy().astype(np.float64)
    true = np.argsort(((cen[:, None] - cen[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :s.nprobe]
    new, old = s.probes.numpy(), o.probes.numpy()
    same = lambda p: float(np.mean([set(x) == set(y) for x, y in zip(p, true)]))  # noqa: E731
    share = lambda p: float(np.mean([len(set(x) & set(y)) / s.nprobe for x, y in zip(p, true)]))  # noqa: E731
    rows = np.random.default_rng(0).choice(len(keys), min(a.queries, len(keys)), replace=False)
    flat = faiss.IndexFlatL2(keys.shape[1])
    flat.add(keys)
    exact = flat.search(keys[rows], a.k + 1)[1]
    r_new, r_old = recall(s, rows, exact, a.k), recall(o, rows, exact, a.k)
    print(f"{a.datastore}: {len(keys)} keys, d {keys.shape[1]}, {s.nlist} lists, {s.nprobe} probed")
    print(f"probe sets equal to the nearest centroids: fixed {same(new):.3f}, old {same(old):.3f}; "
          f"share of the nearest kept: fixed {share(new):.3f}, old {share(old):.3f}")
    print(f"self-search recall@{a.k} against exact: fixed {r_new:.3f}, old {r_old:.3f}")


if __name__ == "__main__":
    main()
