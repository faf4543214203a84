"""``TorchExact``: exact kNN search with the keys held on the device (CPU or GPU).

Candidates by the expansion |q|^2 - 2q.k + |k|^2 (chunked full-fp32 matmul on mean-centred keys, k + extra
per chunk, running merge), then the certified exact re-rank of ``base.CertifiedSearcher``. It is the
``torch`` backend for ``--index flat`` (the backend's entry is in ``ivf.py``) and the recall reference
of the benchmarks.
"""

from __future__ import annotations

import numpy as np
import torch

from mlpmem_lightning.knn.search.base import LOAD_CHUNK, CertifiedSearcher, U, decode, ieee_fp32_matmul, load_keys


class TorchExact(CertifiedSearcher):
    """Exact search with keys held on the device (see the module docstring for the certificate)."""

    def __init__(self, keys: np.ndarray, device: str | torch.device = "cpu", chunk: int = LOAD_CHUNK,
                 query_block: int = 1024, extra: int | None = None):
        self.device, self.chunk, self.query_block, self.extra = torch.device(device), chunk, query_block, extra
        self.source = keys
        self.keys = load_keys(keys, self.device, chunk)
        self.n, self.d = self.keys.shape
        total = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        for s in range(0, self.n, chunk):
            total += self.keys[s:s + chunk].double().sum(0)
        self.mu = (total / max(self.n, 1)).float()  # centring shrinks |q|, |k| and hence the cancellation
        self.kn = torch.cat([self._centred(s).square().sum(1) for s in range(0, self.n, chunk)])
        self.rmax = float(self.kn.max().sqrt()) if self.n else 0.0
        self.bound = 2.0 * (self.d + 16) * U
        self.stats = {"rows": 0, "fallback_rows": 0}

    def _centred(self, s: int) -> torch.Tensor:
        return self.keys[s:s + self.chunk].float() - self.mu

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        with ieee_fp32_matmul(self.device):
            comp = torch.cat([self._block(q, k) for q in queries.split(self.query_block)])
        return decode(comp)

    def _candidates(self, qc: torch.Tensor, qn: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The kk smallest expansion distances per row (any tie order) and their ids, merged over chunks."""
        best_d = best_i = None
        for s in range(0, self.n, self.chunk):
            approx = torch.addmm(qn[:, None] + self.kn[None, s:s + self.chunk], qc, self._centred(s).T, alpha=-2)
            v, j = approx.topk(min(kk, approx.shape[1]), dim=1, largest=False, sorted=False)
            j = j + s
            if best_d is not None:
                v, j = torch.cat([best_d, v], 1), torch.cat([best_i, j], 1)
                if v.shape[1] > kk:
                    v, p = v.topk(kk, dim=1, largest=False, sorted=False)
                    j = j.gather(1, p)
            best_d, best_i = v, j
        return best_d, best_i

    def _block(self, q: torch.Tensor, k: int) -> torch.Tensor:
        kk = min(self._kk(k), self.n)
        qc = q - self.mu
        qn = qc.square().sum(1)
        approx, ids = self._candidates(qc, qn, kk)
        cutoff = approx.max(1).values if kk < self.n else torch.full_like(qn, float("inf"))
        top, unsafe = self._rerank(q, ids, k, cutoff, self.bound * (qn.sqrt() + self.rmax).square())
        if len(unsafe):
            top[unsafe] = self._scan_all(q[unsafe], k)
        return top

    def _scan_all(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """Every key is a candidate column."""
        def positions(rows: slice, c0: int, c1: int) -> torch.Tensor:
            return torch.arange(c0, c1, device=self.device).expand(len(q[rows]), -1)
        return self._exhaustive(q, k, self.n, positions)
