"""k-nearest-neighbour search over a datastore's keys (squared L2), behind one interface.

``Searcher.search(queries [Q, d] float32 on the searcher's device, k) -> (dist [Q, k] float32,
ids [Q, k] int64)``, each row sorted by ascending (distance, id); -1 ids with +inf distance pad
rows with fewer than k results (k > N, or an IVF probe that reached fewer than k keys).

Distances and ties (torch backends, and faiss with ``rerank``): a reported distance is the exact
((q - k)^2).sum accumulated in float64 and rounded once to float32, so it is the same value for a
(query, key) pair in every backend, shape and device. Rows are ordered by (that float32, id):
among equal distances the smaller id wins, at the k boundary too. Final orderings sort int64
composites ``bits(dist) << 32 | id`` (non-negative float32 bit patterns order like the floats), so
they are exact and deterministic although ``torch.topk`` on floats orders ties arbitrarily.
Plain faiss results are ordered by faiss's own (approximate) distances, then id.

Backends:
- ``TorchExact``: candidates by the expansion |q|^2 - 2q.k + |k|^2 (chunked matmul on mean-centred
  keys, full-fp32 matmul forced, k + extra per chunk, running merge), then the exact re-rank. A row
  is certified when the (k+extra)-th candidate's expansion distance, minus a worst-case float32
  error bound, still exceeds the k-th exact distance: no dropped key can then enter or tie the top
  k. Other rows (ties or near-ties wider than ``extra`` at the boundary) are redone by a direct
  exact scan of all keys (slow; rare on real data; counted in ``stats["fallback_rows"]``).
- ``TorchIVF``: coarse lists from a faiss IVF index's quantizer (or ``faiss.Kmeans`` centroids), keys
  grouped by list; a query searches its ``nprobe`` nearest lists exactly (same expansion, re-rank,
  certificate and fallback, restricted to those lists), so nprobe = nlist is exact search.
- ``ClusteredIVF`` (``clustered_search.py``): IVF where the queries of one list share its probe set,
  one GEMM per list; the fast path for bulk GPU search (targets, kNN-LM evaluation).
- ``FaissSearcher``: a faiss index (CPU; GPU only if this faiss has GPU support), optional exact
  re-rank of ``k * rerank_factor`` candidates against the stored keys.

The torch backends switch the float32 matmul precision to IEEE while they run (global state,
restored afterwards): TF32/bf16 matmuls would void the error bound.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn import index as ix

log = logging.getLogger("mlpmem_lightning.knn.search")
SENTINEL = torch.iinfo(torch.int64).max  # composite of a missing result (-1, +inf): sorts last
BUDGET = 1 << 24  # float32 elements of one [rows, candidates, d] temporary (64 MiB)
_U = 2.0 ** -24  # float32 unit roundoff


def composite(dist: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered exactly as (dist, id); dist must be >= 0 float32, ids < 2**32 (or -1: missing)."""
    comp = (dist.contiguous().view(torch.int32).to(torch.int64) << 32) | ids
    return comp.masked_fill(ids < 0, SENTINEL)


def decode(comp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Back from composites to (float32 distances, int64 ids), missing -> (+inf, -1)."""
    missing = comp == SENTINEL
    dist = (comp >> 32).to(torch.int32).view(torch.float32).masked_fill(missing, float("inf"))
    return dist, (comp & 0xFFFFFFFF).masked_fill(missing, -1)


def smallest(comp: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest composites per row, sorted; rows shorter than k are padded with SENTINEL."""
    if comp.shape[1] < k:
        pad = torch.full((comp.shape[0], k - comp.shape[1]), SENTINEL, dtype=torch.int64, device=comp.device)
        comp = torch.cat([comp, pad], dim=1)
    return comp.topk(k, dim=1, largest=False, sorted=True).values


def direct(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Squared L2 by differences, q [R, d] vs keys [R, C, d] or [C, d] -> [R, C] float32.

    Summed in float64 and rounded once, so the result is the correctly rounded float32 of the exact
    distance (fp16 keys and fp32 queries are exact in float64): every backend then reports and ranks
    the very same float32 value for a (query, key) pair, whatever the shapes or reduction order.
    """
    diff = q.double()[:, None, :] - keys.double()
    return (diff * diff).sum(-1).float()


@contextmanager
def ieee_fp32_matmul(device: torch.device) -> Iterator[None]:
    """Full-precision float32 matmul inside (TF32/bf16 would void the error bound); restored after."""
    backend = torch.backends.cuda.matmul if device.type == "cuda" else torch.backends.mkldnn.matmul
    if hasattr(backend, "fp32_precision"):  # torch >= 2.9: per-backend switch
        old, ieee, put = backend.fp32_precision, "ieee", partial(setattr, backend, "fp32_precision")
    else:  # older torch: the legacy global switch
        old, ieee, put = torch.get_float32_matmul_precision(), "highest", torch.set_float32_matmul_precision
    put(ieee)
    try:
        yield
    finally:
        put(old)


def load_keys(keys: np.ndarray, device: torch.device, chunk: int) -> torch.Tensor:
    """The float16 keys on ``device``, copied in chunks (NaN/inf refused by ``key_chunks``)."""
    out = torch.empty(keys.shape, dtype=torch.float16, device=device)
    for start, block in ix.key_chunks(keys, chunk):
        out[start:start + len(block)] = torch.from_numpy(block).to(device=device, dtype=torch.float16)
    return out


class Searcher(ABC):
    """Common interface; subclasses set ``device``, ``n`` (keys) and ``d``.

    Queries should already be on ``device`` (they are moved if not); results come back on the
    queries' device.
    """

    device: torch.device
    n: int
    d: int

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(dist float32 [Q, k], ids int64 [Q, k]) sorted by (distance, id); -1/+inf where fewer than k."""
        if queries.ndim != 2 or queries.shape[1] != self.d:
            raise ValueError(f"queries must be [Q, {self.d}], got {tuple(queries.shape)}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not bool(torch.isfinite(queries).all()):
            raise ValueError("queries contain NaN/inf")
        with torch.autocast(self.device.type, enabled=False):  # bf16-mixed evaluation would run our matmuls in bf16
            dist, ids = self._search(queries.to(self.device, torch.float32), k)
        return dist.to(queries.device), ids.to(queries.device)

    @abstractmethod
    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class _TorchSearcher(Searcher):
    """Shared by the torch backends: exact re-rank of expansion candidates and its certificate."""

    keys: torch.Tensor  # float16 [N, d] on the device, in the backend's storage order
    extra: int | None
    bound: float  # |expansion - exact| <= bound * (|q - centre| + max |k - centre|)^2
    stats: dict[str, int]

    def _kk(self, k: int) -> int:
        return k + (max(32, k // 4) if self.extra is None else self.extra)

    def _ids(self, pos: torch.Tensor) -> torch.Tensor:
        return pos

    def _rerank(self, q: torch.Tensor, pos: torch.Tensor, k: int, cutoff: torch.Tensor,
                err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k composites of the candidates at ``pos`` (-1: none) by exact distances, and the rows to redo.

        Every key left out has expansion distance >= ``cutoff``, hence exact distance >= cutoff - err;
        a row is certified when that exceeds its k-th exact distance with margin (+inf cutoff: none
        left out). Uncertified rows are ties or near-ties wider than ``extra`` at the boundary.
        """
        rows = max(1, BUDGET // (pos.shape[1] * self.d))
        dist = torch.cat([direct(qb, self.keys[pb.clamp_min(0)]) for qb, pb in zip(q.split(rows), pos.split(rows))])
        top = smallest(composite(dist, self._ids(pos)), k)
        dk = decode(top[:, k - 1])[0]
        unsafe = torch.nonzero(torch.isfinite(cutoff) & (cutoff - 2 * err <= dk)).squeeze(1)
        self.stats["rows"] += len(q)
        self.stats["fallback_rows"] += len(unsafe)
        return top, unsafe

    def _exhaustive(self, q: torch.Tensor, k: int, total: int,
                    positions: Callable[[slice, int, int], torch.Tensor]) -> torch.Tensor:
        """Exact (distance, id) top-k by direct differences over each row's candidate columns [0, total).

        The fallback for uncertified rows; ``positions(rows, c0, c1)`` gives storage positions
        [rows, c1 - c0] (-1: no candidate).
        """
        out = []
        for r in range(0, len(q), 64):
            rows = slice(r, r + 64)
            best = smallest(torch.empty(len(q[rows]), 0, dtype=torch.int64, device=self.device), k)
            width = max(k, BUDGET // (len(q[rows]) * self.d))
            for c in range(0, total, width):
                pos = positions(rows, c, min(c + width, total))
                comp = composite(direct(q[rows], self.keys[pos.clamp_min(0)]), self._ids(pos))
                best = smallest(torch.cat([best, comp], 1), k)
            out.append(best)
        return torch.cat(out)


class TorchExact(_TorchSearcher):
    """Exact search with keys held on the device (see the module docstring for the certificate)."""

    def __init__(self, keys: np.ndarray, device: str | torch.device = "cpu", chunk: int = 65536,
                 query_block: int = 1024, extra: int | None = None):
        self.device, self.chunk, self.query_block, self.extra = torch.device(device), chunk, query_block, extra
        self.keys = load_keys(keys, self.device, chunk)
        self.n, self.d = self.keys.shape
        total = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        for s in range(0, self.n, chunk):
            total += self.keys[s:s + chunk].double().sum(0)
        self.mu = (total / max(self.n, 1)).float()  # centring shrinks |q|, |k| and hence the cancellation
        self.kn = torch.cat([self._centred(s).square().sum(1) for s in range(0, self.n, chunk)])
        self.rmax = float(self.kn.max().sqrt()) if self.n else 0.0
        self.bound = 2.0 * (self.d + 16) * _U
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


class TorchIVF(_TorchSearcher):
    """Inverted lists in torch: the ``nprobe`` nearest lists of each query, searched exactly.

    Keys are stored grouped by list. For each list (a loop over lists, vectorised over the queries
    probing it) expansion distances around the list's centroid (small norms, little cancellation)
    give k + extra candidates per (query, list), merged per query; then the exact re-rank and the
    certificate of ``TorchExact``; uncertified rows are redone by direct differences over their lists.
    """

    def __init__(self, keys: np.ndarray, centroids: np.ndarray, device: str | torch.device = "cpu",
                 nprobe: int = 32, chunk: int = 65536, query_block: int = 4096, extra: int | None = None):
        self.device, self.query_block, self.extra = torch.device(device), query_block, extra
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
        self.bound = 2.0 * (self.d + 16) * _U
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


class FaissSearcher(Searcher):
    """A faiss index; results re-sorted by (distance, id) and returned on the queries' device."""

    def __init__(self, index: faiss.Index, keys: np.ndarray | None = None, nprobe: int = 32, rerank: bool = False,
                 rerank_factor: int = 4, device: str | torch.device = "cpu"):
        if rerank and keys is None:
            raise ValueError("rerank=True needs the stored keys")
        self.device, self.n, self.d = torch.device(device), int(index.ntotal), int(index.d)
        self.keys, self.rerank, self.rerank_factor = keys, rerank, max(1, rerank_factor)
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


BACKENDS = ("auto", "torch", "clustered", "faiss")


def resolve_backend(index: str, backend: str, device: str | torch.device) -> str:
    """``auto``: torch exact for flat and ``clustered`` for IVF on CUDA (faiss-gpu is usually missing
    there, and per-query probing is too slow at 10M rows), faiss on CPU."""
    if index not in ix.KINDS:
        raise UserError(f"unknown index {index!r}: choose one of {', '.join(ix.KINDS)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown search backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "clustered" and index == "flat":
        raise UserError("the clustered backend is an IVF search: use --index ivfflat (or backend torch for flat)")
    if backend != "auto":
        return backend
    if torch.device(device).type != "cuda":
        return "faiss"
    return "torch" if index == "flat" else "clustered"


def make_searcher(datastore_dir: str | Path, index: str = "flat", backend: str = "auto", device: str = "cpu",
                  nprobe: int = 32, rerank: bool = False, chunk: int = 65536, rerank_factor: int = 4,
                  nlist: int | None = None) -> Searcher:
    """The searcher for a datastore: ``flat`` is exact search, ``ivfflat``/``ivfpq`` approximate.

    Backends (``auto``: see ``resolve_backend``): ``torch`` is ``TorchExact`` for flat and, for
    ivfflat/ivfpq, a ``TorchIVF`` over the stored faiss index's coarse quantizer with certified exact
    scans of each query's probed lists (PQ codes unused); ``clustered`` is ``ClusteredIVF`` (its own
    seeded k-means with ``nlist`` lists, default about N/256 up to 4096; no faiss index needed);
    ``faiss`` is the stored index, with optional ``rerank``.
    """
    dev = torch.device(device)
    backend = resolve_backend(index, backend, dev)
    manifest, keys = ix.open_keys(datastore_dir)
    log.info("search: %s index, %s backend on %s over %d keys", index, backend, dev, len(keys))
    if backend == "clustered":
        from mlpmem_lightning.knn.search.clustered import ClusteredIVF, cached_centroids, default_nlist

        nlist = nlist or default_nlist(len(keys))
        centroids = cached_centroids(datastore_dir, keys, nlist, fingerprint=manifest.get("fingerprint"))
        return ClusteredIVF(keys, nlist, nprobe, dev, centroids=centroids)
    if backend == "torch":
        if index == "flat":
            return TorchExact(keys, dev, chunk)
        loaded = ix.load_index(datastore_dir, index)  # keep it alive: the quantizer belongs to it
        quantizer = faiss.extract_index_ivf(loaded).quantizer
        return TorchIVF(keys, quantizer.reconstruct_n(0, quantizer.ntotal), dev, nprobe, chunk)
    if index == "flat" and "flat" not in manifest.get("indexes", {}):
        return FaissSearcher(ix.flat_in_memory(keys, chunk), keys, nprobe, rerank, rerank_factor, dev)
    loaded = ix.load_index(datastore_dir, index)
    for _ in ix.key_chunks(keys, chunk):  # NaN/inf keys would poison distances and re-ranks
        pass
    return FaissSearcher(loaded, keys, nprobe, rerank, rerank_factor, dev)
