"""The search interface every backend implements, and the exact-distance arithmetic they share.

``Searcher.search(queries [Q, d] float32 on the searcher's device, k) -> (dist [Q, k] float32,
ids [Q, k] int64)``, each row sorted by ascending (distance, id); -1 ids with +inf distance pad
rows with fewer than k results (k > N, or an IVF probe that reached fewer than k keys).
``Searcher.self_search`` runs every stored key as a query, unit by unit (row chunks, or a backend's own
units such as IVF lists): the one path of ``mlpmem targets``, split across ranks by units.

Distances and ties (torch backends, and faiss with ``rerank``): a reported distance is the exact
((q - k)^2).sum accumulated in float64 and rounded once to float32, so it is the same value for a
(query, key) pair in every backend, shape and device. Rows are ordered by (that float32, id):
among equal distances the smaller id wins, at the k boundary too. Final orderings sort int64
composites ``bits(dist) << 32 | id`` (non-negative float32 bit patterns order like the floats), so
they are exact and deterministic although ``torch.topk`` on floats orders ties arbitrarily.

``CertifiedSearcher`` (``TorchExact``, ``TorchIVF``): candidates by the expansion |q|^2 - 2q.k + |k|^2,
then the exact re-rank. A row is certified when the (k+extra)-th candidate's expansion distance, minus
a worst-case float32 error bound, still exceeds the k-th exact distance: no dropped key can then enter
or tie the top k. Other rows (ties or near-ties wider than ``extra`` at the boundary) are redone by a
direct exact scan (slow; rare on real data; counted in ``stats["fallback_rows"]``). The torch backends
switch the float32 matmul precision to IEEE while they run (global state, restored afterwards):
TF32/bf16 matmuls would void the error bound.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.index import nonfinite_key
from mlpmem_lightning.knn.settings import INDEXES, TARGETS, KNNSettings

SENTINEL = torch.iinfo(torch.int64).max  # composite of a missing result (-1, +inf): sorts last
BUDGET = 1 << 24  # float32 elements of one [rows, candidates, d] temporary (64 MiB)
U = 2.0 ** -24  # float32 unit roundoff
LOAD_CHUNK = 65536  # keys copied to the device at a time
SelfResult = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]  # (unit, datastore rows, dist, ids)
# Bumped whenever a backend finds other neighbours for the same inputs, so that targets and kNN-LM evaluations made
# before are never reused as if current (targets' identity, a study's targets directory and evaluation records).
# 2 (2026-12-02): the clustered IVF's probe sets were the lowest-numbered lists, not the nearest, on most real keys.
SEARCH_REVISION = 2


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
    """The float16 keys on ``device``, copied in chunks as they are stored and checked there for NaN/inf.

    Why not ``key_chunks``: it widens every block to float32 and scans it on the host, single-threaded (a study
    trial builds four searchers over 12M keys, while other workers share the CPU), and copies twice the bytes. Here
    the host only copies the stored bytes, and the scan runs where the keys go. It runs after the cast, so a float32
    key that overflows float16 is refused too (the host scan passed it).
    """
    out = torch.empty(keys.shape, dtype=torch.float16, device=device)
    for start in range(0, len(keys), chunk):
        part = out[start:start + chunk]
        part.copy_(torch.from_numpy(np.array(keys[start:start + chunk])).to(device))  # a copy: maps are read-only
        finite = torch.isfinite(part).all(1)
        if not bool(finite.all()):
            raise nonfinite_key(start + int((~finite).nonzero()[0, 0]))
    return out


class Searcher(ABC):
    """Common interface; subclasses set ``device``, ``n`` (keys), ``d`` and ``source``.

    Queries should already be on ``device`` (they are moved if not); results come back on the
    queries' device. ``source`` is the datastore's keys in row order (host, memory-mapped): the
    queries of the default ``self_search``.
    """

    device: torch.device
    n: int
    d: int
    source: np.ndarray | None = None

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

    def units(self, chunk: int = TARGETS.chunk) -> np.ndarray:
        """Rows in each unit of ``self_search``, in order: row chunks of ``chunk`` unless a backend has its own."""
        return np.diff(np.append(np.arange(0, self.n, chunk), self.n))

    def self_search(self, k: int, first: int = 0, stop: int | None = None, chunk: int = TARGETS.chunk
                    ) -> Iterator[SelfResult]:
        """Every stored key as a query, units ``first .. stop - 1``: (unit, datastore rows, dist [r, k], ids [r, k]).

        A unit's result does not depend on the range asked for, so ranks (each a range of units) and a
        resumed run (the units left) write the bytes of one uninterrupted run.
        """
        if self.source is None:
            raise ValueError(f"{type(self).__name__} was built without its keys (source): it cannot self-search")
        stop = len(self.units(chunk)) if stop is None else stop
        for unit in range(first, stop):
            a, b = unit * chunk, min((unit + 1) * chunk, self.n)
            queries = torch.from_numpy(np.asarray(self.source[a:b], dtype=np.float32)).to(self.device)
            yield unit, torch.arange(a, b, device=self.device), *self.search(queries, k)

    def search_inputs(self) -> dict[str, Any]:
        """What the neighbours come from besides the keys (recorded by targets): nothing, unless overridden."""
        return {}


class CertifiedSearcher(Searcher):
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


@dataclass(frozen=True)
class Backend:
    """One entry of the search registry (``mlpmem_lightning.knn.search``).

    ``build(datastore, settings, device, load_chunk)`` returns the searcher; ``indexes`` are the ``--index``
    values it serves; ``faiss_index``: it reads the stored faiss index of an IVF ``--index`` (``targets``
    builds it first when missing). ``identity(device)``: what else, on that device, decides which neighbours it
    finds; ``targets`` keys its output by it, so a run is never resumed with other inputs than it began with.
    """

    name: str
    build: Callable[[Datastore, KNNSettings, torch.device, int], Searcher]
    indexes: tuple[str, ...] = INDEXES
    faiss_index: bool = False
    help: str = ""
    identity: Callable[[torch.device], dict[str, Any]] = lambda device: {}
