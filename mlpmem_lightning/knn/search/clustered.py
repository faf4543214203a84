"""``ClusteredIVF``: inverted-file kNN search on a GPU as one matrix product per list.

Why not per-query probing (``ivf.TorchIVF``, faiss IVF): with 10M self-queries each probing its
own lists, the work is a scatter of tiny products and a float64 re-rank that gathers k key vectors
per query (terabytes of traffic at k=1024). Here every query assigned to list ``c`` searches the
same candidate set: the ``nprobe`` lists whose centroids are nearest to ``c``'s centroid (``c``
first). The queries of one list and its candidates are then a dense [n_c, m_c] product and one
``topk``, so the whole search is ``nlist`` large GEMMs. Queries near a list boundary see a slightly
different neighbourhood than per-query probing would; recall against exact search is measured by
``mlpmem bench`` and reported with each run. A list whose probe set would exceed a candidate budget (default twice the
average, ``2 nprobe N / nlist``) stops at the probes that fit, so dense regions of duplicated text cannot
make the cost quadratic. ``nprobe = nlist`` makes it exact search (the budget then covers every key).

Distances are squared L2 by the expansion around the list's centroid (small norms, little
cancellation), full-precision float32 matmul, clamped at 0. The k results are sorted by (float32
distance, id); which of several keys tied exactly at the k-th distance is kept is up to ``topk``.
A query's result depends only on its list, not on which other queries share the call, so a run
split into pieces (resume, several GPUs) gives the same bytes on the same kind of device. Centroids
come from a seeded k-means on a sample of the keys (``kmeans.py``: faiss on a CPU, our own torch Lloyd on a GPU,
which faiss-cpu lacks), cached beside the datastore.

Its self-search units are the IVF lists: a list's queries are its own keys, already grouped on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.writer import derived_file
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.search.base import (
    SEARCH_REVISION,
    TARGETS,
    Backend,
    Searcher,
    SelfResult,
    composite,
    decode,
    ieee_fp32_matmul,
    load_keys,
    smallest,
)
from mlpmem_lightning.knn.search.kmeans import NITER, PER_LIST, implementation, train_centroids
from mlpmem_lightning.knn.settings import KNN, KNNSettings

log = logging.getLogger(__name__)
SCORES = 1 << 28  # float32 elements of one [queries, candidates] score block (1 GiB)


def default_nlist(n_rows: int) -> int:
    """About 256 keys per list (faiss wants at least 39 per centroid), capped at the paper's 4096."""
    return int(min(4096, max(1, n_rows // 256)))


def cached_centroids(datastore_dir: str | Path, keys: np.ndarray, nlist: int, seed: int = 0,
                     fingerprint: str | None = None, device: str | torch.device = "cpu") -> np.ndarray:
    """``train_centroids`` once per datastore: saved beside the keys (the targets run, the kNN-LM's
    validate and test all reuse it; a finished datastore's keys never change).

    The file is ``centroids-<nlist>-seed<seed>-<kmeans>.npy``, named by the k-means that made it (faiss on a CPU
    ``device``, torch on a GPU: their centroids differ), so a GPU run and a CPU run of one datastore each keep their
    own and neither overwrites the other's. ``.json`` beside it, written after the array, records what they were
    made from: the datastore's fingerprint (``fingerprint``, default: its manifest's), the k-means settings and
    implementation, the array's sha256 and the package version. A cache whose record does not match is retrained,
    never used. Ranks that want it at once queue on the datastore's lock: the first trains it, the others read it.
    """
    kmeans = implementation(device)
    path = Path(datastore_dir) / f"centroids-{nlist}-seed{seed}-{kmeans}.npy"
    record_path = path.with_suffix(".json")
    if fingerprint is None and artifacts.is_complete(datastore_dir):
        fingerprint = json.loads((Path(datastore_dir) / artifacts.MANIFEST).read_text()).get("fingerprint")
    want = {"datastore_fingerprint": fingerprint, "nlist": nlist, "seed": seed, "per_list": PER_LIST,
            "niter": NITER, "kmeans": kmeans, "shape": [nlist, int(keys.shape[1])]}

    def recorded() -> dict[str, Any] | None:
        try:
            record = json.loads(record_path.read_text()) if record_path.is_file() else None
        except json.JSONDecodeError:
            return {}
        return record if isinstance(record, dict) else {}

    def make(tmp: Path) -> dict[str, Any]:
        with open(tmp, "wb") as f:
            np.save(f, train_centroids(keys, nlist, seed, PER_LIST, NITER, device))
        return {}

    def record(description: dict[str, Any]) -> None:
        artifacts.atomic_write_text(record_path, json.dumps(description, indent=2, sort_keys=True) + "\n")

    derived_file(Path(datastore_dir), path, want, recorded, make, record, wait=True, logger=log)
    return np.load(path)


class ClusteredIVF(Searcher):
    """IVF search where all queries of one list share its probe set (see the module docstring).

    ``keys`` [N, d] (float16 or float32, memory-mapped is fine) go to ``device`` as float16, grouped
    by list; ``ids`` maps a storage position back to the datastore row.
    """

    def __init__(self, keys: np.ndarray, nlist: int, nprobe: int = KNN.nprobe, device: str | torch.device = "cpu",
                 centroids: np.ndarray | None = None, seed: int = 0, chunk: int = 1 << 20,
                 max_candidates: int | None = None):
        self.device, self.chunk, self.source = torch.device(device), chunk, keys
        cen = (train_centroids(keys, nlist, seed, device=self.device) if centroids is None
               else np.asarray(centroids, np.float32))
        self.centroids = torch.from_numpy(cen).to(self.device)
        self.nlist, self.nprobe = len(cen), max(1, min(nprobe, len(cen)))
        keys_t = load_keys(keys, self.device, chunk)
        self.n, self.d = keys_t.shape
        assign = torch.cat([self.nearest(keys_t[s:s + chunk].float(), 1)[:, 0] for s in range(0, self.n, chunk)])
        self.ids = torch.argsort(assign, stable=True)
        self.keys = keys_t[self.ids]  # grouped by list
        del keys_t
        counts = torch.bincount(assign, minlength=self.nlist)
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.counts = counts
        # each list's probe set: the nprobe centroids nearest its own, itself first (distance 0)
        self.probes = self.nearest(self.centroids, self.nprobe, sort=True)
        # a candidate budget (faiss's max_codes): lists in dense regions stop probing once their
        # candidates exceed it, which bounds the quadratic cost of large lists (own list always kept)
        budget = max_candidates or 2 * self.nprobe * -(-self.n // self.nlist)
        cum = counts[self.probes].cumsum(1)
        self.used = ((cum <= budget).sum(1).clamp_min(1)).tolist()  # probes kept per list, on the host
        self.sizes = cum.gather(1, torch.tensor(self.used, device=self.device)[:, None] - 1)[:, 0].tolist()
        self.bounds = self.offsets.tolist()
        log.info("clustered IVF: %d keys in %d lists (largest %d), %d probed, budget %d candidates cuts %d lists",
                 self.n, self.nlist, int(counts.max()), self.nprobe, budget, sum(u < self.nprobe for u in self.used))

    def nearest(self, x: torch.Tensor, p: int, sort: bool = False) -> torch.Tensor:
        """Indices [len(x), p] of the p nearest centroids (ties to the lower index when ``sort``).

        Unsorted (a key's or query's own list), ``|x|^2`` is left out of the expansion: it is the same for every
        centroid of a row. Sorted (the probe sets) needs the whole squared distance: it is clamped at 0 to order
        the composites, and the partial ``|c|^2 - 2 x.c`` is negative for every centroid near ``x`` (always for
        ``x`` itself), so clamping it made all of them tie at 0 and the lowest-numbered lists won. Keys that share
        a large common component, as a language model's do, then had lists 0, 1, … as every list's probe set.
        """
        with ieee_fp32_matmul(self.device):
            dist = torch.addmm(self.centroids.square().sum(1)[None], x, self.centroids.T, alpha=-2)
        if sort:
            dist = (dist + x.square().sum(1)[:, None]).clamp_min(0)
            lists = torch.arange(self.nlist, device=self.device).expand_as(dist)
            return smallest(composite(dist, lists), p) & 0xFFFFFFFF
        return dist.topk(p, dim=1, largest=False, sorted=False).indices

    def candidates(self, lst: int) -> torch.Tensor:
        """Storage positions of the keys in ``lst``'s probe set, concatenated list by list."""
        probe = self.probes[lst, :self.used[lst]]
        sizes, starts, total = self.counts[probe], self.offsets[probe], self.sizes[lst]
        first = torch.repeat_interleave(starts - (sizes.cumsum(0) - sizes), sizes, output_size=total)
        return first + torch.arange(total, device=self.device)

    def search_list(self, q: torch.Tensor, lst: int, k: int) -> torch.Tensor:
        """Composites [len(q), k] of queries assigned to ``lst`` against its probe set, sorted by (dist, id)."""
        pos = self.candidates(lst)
        cen = self.centroids[lst]
        kc = self.keys[pos].float() - cen
        kn, ids = kc.square().sum(1), self.ids[pos]
        out = []
        with ieee_fp32_matmul(self.device):
            for qb in q.split(max(1, SCORES // max(1, len(pos)))):
                qc = qb - cen
                dist = torch.addmm(qc.square().sum(1)[:, None] + kn[None], qc, kc.T, alpha=-2).clamp_min_(0)
                kk = min(k, len(pos))
                v, j = dist.topk(kk, dim=1, largest=False, sorted=False)
                out.append(smallest(composite(v, ids[j]), k))  # (dist, id) order, padded to k
        return torch.cat(out)

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        assign = torch.cat([self.nearest(b, 1)[:, 0] for b in queries.split(self.chunk)])
        order = torch.argsort(assign, stable=True)
        lists, counts = torch.unique_consecutive(assign[order], return_counts=True)
        out = torch.empty(len(queries), k, dtype=torch.int64, device=self.device)
        start = 0
        for lst, count in zip(lists.tolist(), counts.tolist()):
            rows = order[start:start + count]
            out[rows] = self.search_list(queries[rows], lst, k)
            start += count
        return decode(out)

    def self_search_work(self) -> tuple[int, int]:
        """(FLOPs, score elements) of a whole self-search: each list's queries against its probe set (2d FLOPs per
        pair, in IEEE fp32) plus assigning every key to its list; each score is written once and read by topk."""
        pairs = int((self.counts.double() * torch.tensor(self.sizes, dtype=torch.float64, device=self.device)).sum())
        return 2 * self.d * (pairs + self.n * self.nlist), pairs

    def units(self, chunk: int = TARGETS.chunk) -> np.ndarray:
        """Self-search units are the IVF lists (``chunk`` is not used): the rows of each list."""
        return self.counts.cpu().numpy()

    def self_search(self, k: int, first: int = 0, stop: int | None = None, chunk: int = TARGETS.chunk
                    ) -> Iterator[SelfResult]:
        """Every stored key as a query, list by list: (list, datastore rows, dist [n_c, k], ids [n_c, k]).

        A list's queries are its own keys (already grouped), so nothing is assigned or gathered twice.
        Results for a list do not depend on the range asked for.
        """
        last = self.nlist if stop is None else stop
        for lst in range(first, last):
            a, b = self.bounds[lst], self.bounds[lst + 1]
            if a == b:
                yield lst, self.ids[a:b], *decode(torch.empty(0, k, dtype=torch.int64, device=self.device))
                continue
            yield lst, self.ids[a:b], *decode(self.search_list(self.keys[a:b].float(), lst, k))

    def search_inputs(self) -> dict[str, Any]:
        """The centroids (the lists) the neighbours were found in."""
        cen = np.ascontiguousarray(self.centroids.cpu().numpy())
        return {"centroids_sha256": hashlib.sha256(cen.tobytes()).hexdigest(), "nlist": self.nlist}


def build(ds: Datastore, s: KNNSettings, device: torch.device, chunk: int) -> Searcher:
    nlist = s.nlist or default_nlist(len(ds))
    centroids = cached_centroids(ds.path, ds.keys, nlist, fingerprint=ds.fingerprint, device=device)
    return ClusteredIVF(ds.keys, nlist, s.nprobe, device, centroids=centroids)


def identity(device: torch.device) -> dict[str, Any]:
    """The search's revision and the k-means its lists come from on ``device``, where it is not faiss's.

    The revision: targets made before the probe-set fix (``SEARCH_REVISION`` 2) hold other neighbours, and are
    refused rather than reused. The k-means: a targets run begun on a GPU and resumed on a CPU would otherwise fill
    its rows from two different sets of lists."""
    kmeans = implementation(device)
    return {"search_revision": SEARCH_REVISION, **({} if kmeans == "faiss-cpu" else {"kmeans": kmeans})}


BACKEND = Backend("clustered", build, indexes=("ivfflat", "ivfpq"), identity=identity,
                  help="IVF where the queries of one list share its probe set, one GEMM per list (its own seeded "
                       "k-means, no faiss index; the GPU default for IVF)")
