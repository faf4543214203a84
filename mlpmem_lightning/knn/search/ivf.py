"""``TorchIVF``: inverted lists in torch, each query searching its ``nprobe`` nearest lists exactly;
and the registry entry of the ``torch`` backend (``TorchExact`` for flat, ``TorchIVF`` for IVF indexes).

Coarse lists come from the stored faiss IVF index's quantizer (PQ codes unused); keys are grouped by list
and searched with the certified exact re-rank of ``base.CertifiedSearcher`` restricted to the probed lists,
so nprobe = nlist is exact search.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.index import load_index
from mlpmem_lightning.knn.search.base import (
    LOAD_CHUNK,
    Backend,
    CertifiedSearcher,
    Searcher,
    U,
    decode,
    ieee_fp32_matmul,
    load_keys,
)
from mlpmem_lightning.knn.search.exact import TorchExact
from mlpmem_lightning.knn.settings import KNN, KNNSettings


class TorchIVF(CertifiedSearcher):
    """Inverted lists in torch: the ``nprobe`` nearest lists of each query, searched exactly.

    Keys are stored grouped by list. For each list (a loop over lists, vectorised over the queries
    probing it) expansion distances around the list's centroid (small norms, little cancellation)
    give k + extra candidates per (query, list), merged per query; then the exact re-rank and the
    certificate of ``TorchExact``; uncertified rows are redone by direct differences over their lists.
    """

    def __init__(self, keys: np.ndarray, centroids: np.ndarray, device: str | torch.device = "cpu",
                 nprobe: int = KNN.nprobe, chunk: int = LOAD_CHUNK, query_block: int = 4096, extra: int | None = None):
        self.device, self.query_block, self.extra, self.source = torch.device(device), query_block, extra, keys
        self.centroids = torch.as_tensor(np.asarray(centroids, dtype=np.float32), device=self.device)
        self.nlist = len(self.centroids)
        self.nprobe = max(1, min(nprobe, self.nlist))
        keys_t = load_keys(keys, self.device, chunk)
        self.n, self.d = keys_t.shape
        assign = torch.cat([self._nearest(keys_t[s:s + chunk].float(), 1)[:, 0] for s in range(0, self.n, chunk)])
        order = torch.argsort(assign, stable=True)
        self.keys, self.ids, assign = keys_t[order], order, assign[order]  # grouped by list; ids: datastore rows
        del keys_t
        self.offsets = torch.cat([assign.new_zeros(1), torch.bincount(assign, minlength=self.nlist).cumsum(0)])
        self.bounds = self.offsets.tolist()
        self.kn = torch.cat([(self.keys[s:s + chunk].float() - self.centroids[assign[s:s + chunk]]).square().sum(1)
                             for s in range(0, self.n, chunk)])
        self.rmax = torch.zeros(self.nlist, device=self.device).scatter_reduce(0, assign, self.kn, "amax").sqrt()
        self.bound = 2.0 * (self.d + 16) * U
        self.stats = {"rows": 0, "fallback_rows": 0}

    def _ids(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos >= 0, self.ids[pos.clamp_min(0)], -1)

    def _nearest(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """Indices of the p nearest centroids (expansion distances: list choice need not be exact)."""
        with ieee_fp32_matmul(self.device):
            dist = torch.addmm(self.centroids.square().sum(1)[None], x, self.centroids.T, alpha=-2)
        return dist.topk(p, dim=1, largest=False, sorted=False).indices

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        with ieee_fp32_matmul(self.device):
            comp = torch.cat([self._block(q, k) for q in queries.split(self.query_block)])
        return decode(comp)

    def _block(self, q: torch.Tensor, k: int) -> torch.Tensor:
        kk, probe = self._kk(k), self._nearest(q, self.nprobe)
        flat = probe.flatten()
        pair = torch.argsort(flat, stable=True)  # (query, probe) pairs grouped by list
        qrow, qsq = pair // self.nprobe, q.new_zeros(len(flat))  # |q - centroid|^2 per pair
        best_d = q.new_full((len(q), kk), float("inf"))
        best_p = torch.full((len(q), kk), -1, dtype=torch.int64, device=self.device)
        first = 0
        for lst, count in enumerate(torch.bincount(flat, minlength=self.nlist).tolist()):
            rows, first = qrow[first:first + count], first + count
            a, b = self.bounds[lst], self.bounds[lst + 1]
            if count == 0 or a == b:
                continue
            qc = q[rows] - self.centroids[lst]
            qn = qc.square().sum(1)
            kc = self.keys[a:b].float() - self.centroids[lst]
            v, j = torch.addmm(qn[:, None] + self.kn[None, a:b], qc, kc.T, alpha=-2).topk(
                min(kk, b - a), dim=1, largest=False, sorted=False)
            v, j = torch.cat([best_d[rows], v], 1), torch.cat([best_p[rows], j + a], 1)
            v, p = v.topk(kk, dim=1, largest=False, sorted=False)
            best_d[rows], best_p[rows], qsq[pair[first - count:first]] = v, j.gather(1, p), qn
        err = (self.bound * (qsq.view_as(probe).sqrt() + self.rmax[probe]).square()).max(1).values
        top, unsafe = self._rerank(q, best_p, k, best_d.max(1).values, err)
        if len(unsafe):
            top[unsafe] = self._scan_lists(q[unsafe], probe[unsafe], k)
        return top

    def _scan_lists(self, q: torch.Tensor, probe: torch.Tensor, k: int) -> torch.Tensor:
        """Candidate column j of a row walks the concatenation of its probed lists."""
        size = (self.offsets[1:] - self.offsets[:-1])[probe]
        cum = size.cumsum(1)
        first, start = cum - size, self.offsets[:-1][probe]

        def positions(rows: slice, c0: int, c1: int) -> torch.Tensor:
            j = torch.arange(c0, c1, device=self.device).expand(len(q[rows]), -1).contiguous()
            p = torch.searchsorted(cum[rows], j, right=True)  # which probed list column j falls in
            valid = p < cum.shape[1]
            p = p.clamp_max(cum.shape[1] - 1)
            return torch.where(valid, start[rows].gather(1, p) + j - first[rows].gather(1, p), -1)
        return self._exhaustive(q, k, int(cum[:, -1].max()), positions)


def build(ds: Datastore, s: KNNSettings, device: torch.device, chunk: int) -> Searcher:
    if s.index == "flat":
        return TorchExact(ds.keys, device, chunk)
    loaded = load_index(ds.path, s.index)  # keep it alive: the quantizer belongs to it
    quantizer = faiss.extract_index_ivf(loaded).quantizer
    return TorchIVF(ds.keys, quantizer.reconstruct_n(0, quantizer.ntotal), device, s.nprobe, chunk)


BACKEND = Backend("torch", build, faiss_index=True,
                  help="exact search on the device (flat), or certified scans of each query's nprobe lists of the "
                       "stored faiss index (ivfflat/ivfpq)")
