"""``FaissSearcher``: a faiss index (CPU; GPU only if this faiss has GPU support), the ``faiss`` backend.

Plain faiss results are ordered by faiss's own (approximate) distances, then id; with ``rerank`` the
``k * rerank_factor`` candidates are re-ranked by exact distances (``base.direct``) from the stored keys.
``--index flat`` without a stored flat index builds an ``IndexFlatL2`` in memory.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.index import flat_in_memory, key_chunks, load_index
from mlpmem_lightning.knn.search.base import BUDGET, Backend, Searcher, composite, decode, direct, smallest
from mlpmem_lightning.knn.settings import KNN, KNNSettings


class FaissSearcher(Searcher):
    """A faiss index; results re-sorted by (distance, id) and returned on the queries' device."""

    def __init__(self, index: faiss.Index, keys: np.ndarray | None = None, nprobe: int = KNN.nprobe,
                 rerank: bool = KNN.rerank, rerank_factor: int = 4, device: str | torch.device = "cpu"):
        if rerank and keys is None:
            raise ValueError("rerank=True needs the stored keys")
        self.device, self.n, self.d = torch.device(device), int(index.ntotal), int(index.d)
        self.keys, self.rerank, self.rerank_factor = keys, rerank, max(1, rerank_factor)
        self.source = keys
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = max(1, min(nprobe, ivf.nlist))
        self.gpu = self.device.type == "cuda" and hasattr(faiss, "StandardGpuResources")
        if self.gpu:  # faiss-gpu is optional; without it the search runs on CPU
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, self.device.index or 0, index)
        self.index = index

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        kk = k * self.rerank_factor if self.rerank else k
        if self.gpu:
            kk = max(k, min(kk, 2048))  # faiss-gpu's k limit
        x = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        dist, ids = self.index.search(x, kk)
        ids = torch.from_numpy(ids)
        dist = self._exact(x, ids) if self.rerank else torch.from_numpy(dist).clamp_min(0)
        return decode(smallest(composite(dist, ids), k))

    def _exact(self, x: np.ndarray, ids: torch.Tensor) -> torch.Tensor:
        """Exact distances (see ``direct``) to faiss's candidates, read from the stored keys in row blocks."""
        rows = max(1, BUDGET // (ids.shape[1] * self.d))
        out = []
        for r in range(0, len(x), rows):
            cand = torch.from_numpy(np.asarray(self.keys[ids[r:r + rows].clamp_min(0).numpy()]))
            out.append(direct(torch.from_numpy(x[r:r + rows]), cand))
        return torch.cat(out)


def build(ds: Datastore, s: KNNSettings, device: torch.device, chunk: int) -> Searcher:
    if s.index == "flat" and "flat" not in ds.manifest.get("indexes", {}):
        return FaissSearcher(flat_in_memory(ds.keys, chunk), ds.keys, s.nprobe, s.rerank, device=device)
    loaded = load_index(ds.path, s.index)
    for _ in key_chunks(ds.keys, chunk):  # NaN/inf keys would poison distances and re-ranks
        pass
    return FaissSearcher(loaded, ds.keys, s.nprobe, s.rerank, device=device)


BACKEND = Backend("faiss", build, faiss_index=True,
                  help="the stored faiss index (CPU, or GPU with faiss-gpu), optional exact --rerank")
