"""`mlpmem bench --sections targets`: rows/s and recall of every search backend of the registry.

On synthetic clustered keys (``bench.synthetic``) at several datastore sizes: ``clustered`` as a whole
``build_targets`` run, ``torch`` as per-query-probe ``TorchIVF`` over the same lists (the "before"),
``faiss`` as faiss-cpu IVFPQ on the host's cores, and any other registered backend through the registry,
each on a sample of queries; exact torch search always runs, as the recall reference.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from mlpmem_lightning.bench.synthetic import SHARED, synthetic_datastore
from mlpmem_lightning.bench.timing import gpu_name, per_second
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.index import build_index, load_index
from mlpmem_lightning.knn.search import REGISTRY, FaissSearcher, TorchExact, TorchIVF, open_searcher
from mlpmem_lightning.knn.search.clustered import ClusteredIVF, cached_centroids, default_nlist
from mlpmem_lightning.knn.settings import KNN, KNNSettings
from mlpmem_lightning.knn.targets import TargetSettings, build_targets, ensure_index


def _recall(ids: torch.Tensor, exact: torch.Tensor) -> float:
    a, b = ids.cpu().numpy(), exact.cpu().numpy()
    return float(np.mean([len(np.intersect1d(x[x >= 0], y)) / len(y) for x, y in zip(a, b)]))


def target_backends() -> tuple[str, ...]:
    """The backends ``bench_targets`` can time: every name of the search registry."""
    return tuple(REGISTRY)


def bench_targets(rows: list[int], work: Path, d: int = 256, k: int = KNN.k, keep: int = 128, vocab: int = 16384,
                  nprobe: int = KNN.nprobe, sample: int = 2048, pq_m: int = 64, faiss_threads: int | None = None,
                  profile_dir: Path | None = None, emit: Callable[[dict], None] | None = None,
                  backends: tuple[str, ...] | None = None) -> list[dict]:
    """rows/s of each search backend at each datastore size (see the module docstring).

    ``emit`` receives each row as soon as it is measured (a 10M-row size takes minutes). ``backends``
    picks among the registry's names (default: all); exact search always runs, as the recall reference.
    """
    backends = target_backends() if backends is None else backends
    unknown = sorted(set(backends) - set(target_backends()))
    if unknown:
        raise UserError(f"unknown targets backends {', '.join(unknown)}: choose from {', '.join(target_backends())}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gpu, out = gpu_name(), _Rows(emit)
    if faiss_threads:
        faiss.omp_set_num_threads(faiss_threads)
    for n in rows:
        ds = Datastore(synthetic_datastore(work / f"ds-{n}-shared{SHARED}", n, d, vocab))  # keys of other versions kept
        nlist = default_nlist(n)
        base = {"bench": "targets", "gpu": gpu, "dtype": "fp32 (keys fp16)", "rows": n, "d": d, "k": k,
                "keep": keep, "nlist": nlist, "nprobe": nprobe}
        pick = np.sort(np.random.default_rng(1).choice(n, size=sample, replace=False))
        q = torch.from_numpy(np.asarray(ds.keys[pick], dtype=np.float32)).to(dev)

        exact = TorchExact(ds.keys, dev)
        rate, (_, exact_ids) = per_second(lambda: exact.search(q, k + 1), sample)
        out.append({**base, "backend": "torch exact", "queries": sample, "rows_per_s": round(rate),
                    "recall": 1.0, "projected_full_s": round(n / rate, 1)})
        exact = None  # free its device copy of the keys
        run = _Run(ds, q, exact_ids, work, base, out, dev)
        for name in backends:
            _BENCH.get(name, _bench_registered)(run, name, profile_dir=profile_dir if n == rows[-1] else None,
                                                pq_m=pq_m)
        shutil.rmtree(work / f"targets-{n}", ignore_errors=True)
        shutil.rmtree(ds.path, ignore_errors=True)
    return list(out)


class _Rows(list):
    """A list that hands each appended row to ``emit`` too."""

    def __init__(self, emit: Callable[[dict], None] | None) -> None:
        super().__init__()
        self.emit = emit

    def append(self, row: dict) -> None:
        super().append(row)
        if self.emit is not None:
            self.emit(row)


@dataclass
class _Run:
    """One datastore size of ``bench_targets``: the datastore, the sampled queries and their exact neighbours."""

    ds: Any  # knn.datastore.Datastore
    q: torch.Tensor
    exact_ids: torch.Tensor
    work: Path
    base: dict
    out: list
    dev: str

    def row(self, backend: str, queries: int, rate: float, ids: torch.Tensor, **extra: Any) -> None:
        self.out.append({**self.base, "backend": backend, "queries": queries, "rows_per_s": round(rate),
                         "recall": round(_recall(ids, self.exact_ids[:len(ids)]), 4), **extra})


def _bench_faiss(run: _Run, name: str, pq_m: int, **_: Any) -> None:
    """faiss-cpu IVFPQ on the host's cores: index build, then the sampled queries."""
    n, nlist, k = run.base["rows"], run.base["nlist"], run.base["k"]
    t0 = time.perf_counter()
    build_index(run.ds.path, "ivfpq", nlist=nlist, m=pq_m, nbits=8, train_size=min(n, 256 * nlist))
    built = time.perf_counter() - t0
    pq = FaissSearcher(load_index(run.ds.path, "ivfpq"), nprobe=run.base["nprobe"])
    rate, (_, pq_ids) = per_second(lambda: pq.search(run.q.cpu(), k + 1), len(run.q))
    run.row(f"faiss-cpu IVFPQ m={pq_m} ({faiss.omp_get_max_threads()} threads)", len(run.q), rate, pq_ids,
            projected_full_s=round(built + n / rate, 1), index_build_s=round(built, 1))


def _bench_clustered(run: _Run, name: str, profile_dir: Path | None, **_: Any) -> None:
    """The clustered IVF as a whole ``build_targets`` run (recall on the sampled queries)."""
    n, nlist, nprobe, k = (run.base[c] for c in ("rows", "nlist", "nprobe", "k"))
    settings = TargetSettings(index="ivfflat", k=k, keep=run.base["keep"], nprobe=nprobe, nlist=nlist,
                              backend="clustered")
    t0 = time.perf_counter()
    m = build_targets(run.ds.path, run.work / f"targets-{n}", settings, device=run.dev)
    full = time.perf_counter() - t0
    # the centroids build_targets cached beside the datastore: the same lists, no second k-means
    centroids = cached_centroids(run.ds.path, run.ds.keys, nlist, device=run.dev)
    ivf = ClusteredIVF(run.ds.keys, nlist, nprobe, run.dev, centroids=centroids)
    _, ivf_ids = ivf.search(run.q, k + 1)
    run.row("clustered IVF (whole targets run)", n, n / full, ivf_ids, projected_full_s=round(full, 1),
            mass_kept_mean=round(m["mass_kept_mean"], 4), **search_bounds(ivf, full))
    if profile_dir is not None:
        values = torch.from_numpy(np.asarray(run.ds.values, dtype=np.int64)).to(run.dev)
        _profile_search(ivf, values, profile_dir / f"profile_targets_{n}.txt", k + 1, run.base["keep"])


def search_bounds(ivf: ClusteredIVF, seconds: float) -> dict:
    """Where a whole self-search of ``seconds`` sits against the chip: its fp32 FLOPs over the fp32 peak, and its
    score matrix (4 bytes written, 4 read by topk per element) over the HBM bandwidth."""
    from mlpmem_lightning.core.hardware import hbm_bandwidth, peak_fp32

    flops, scores = ivf.self_search_work()
    peak, bw = peak_fp32(gpu_name()), hbm_bandwidth(gpu_name())
    out = {"search_tflop": round(flops / 1e12, 2), "score_gelements": round(scores / 1e9, 1)}
    if peak and bw:
        out |= {"flop_bound_s": round(flops / peak, 2), "vs_flop_bound": round(seconds / (flops / peak), 1),
                "bytes_bound_s": round(8 * scores / bw, 2), "vs_bytes_bound": round(seconds / (8 * scores / bw), 1)}
    return out


def _bench_torch(run: _Run, name: str, **_: Any) -> None:
    """``TorchIVF`` (the torch backend on an IVF index) per-query probes, 512 queries, over the clustered lists."""
    n, nlist, k = run.base["rows"], run.base["nlist"], run.base["k"]
    lists = TorchIVF(run.ds.keys, cached_centroids(run.ds.path, run.ds.keys, nlist, device=run.dev), run.dev,
                     run.base["nprobe"])
    few = run.q[:512]
    rate, (_, ids) = per_second(lambda: lists.search(few, k + 1), len(few))
    run.row("torch IVF per-query probes (before)", len(few), rate, ids, projected_full_s=round(n / rate, 1))


def _bench_registered(run: _Run, name: str, **_: Any) -> None:
    """Any other registered backend, through the registry: its first index (flat if it serves it)."""
    entry = REGISTRY[name]
    index = "flat" if "flat" in entry.indexes else entry.indexes[0]
    if entry.faiss_index:
        ensure_index(run.ds.path, TargetSettings(index=index, nlist=run.base["nlist"]))
    searcher = open_searcher(run.ds, KNNSettings(index=index, backend=name, nprobe=run.base["nprobe"],
                                                 nlist=run.base["nlist"]), run.dev)
    rate, (_, ids) = per_second(lambda: searcher.search(run.q, run.base["k"] + 1), len(run.q))
    run.row(f"{name} ({index})", len(run.q), rate, ids, projected_full_s=round(run.base["rows"] / rate, 1))


_BENCH = {"clustered": _bench_clustered, "torch": _bench_torch, "faiss": _bench_faiss}


def _profile_search(ivf, values: torch.Tensor, path: Path, k: int, keep: int, lists: int = 16) -> None:
    """Profiler table of the targets list path (search, then aggregation) over a few lists."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from mlpmem_lightning.knn.targets import _targets

    s = TargetSettings(index="ivfflat", k=k - 1, keep=keep)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ivf.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        it = ivf.self_search(k, 0, min(lists, ivf.nlist))
        while True:
            with record_function("search_list"):
                got = next(it, None)
            if got is None:
                break
            _, rows, dist, nbr = got
            with record_function("aggregate"):
                _targets(s, values, rows, dist, nbr)
        if ivf.device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if ivf.device.type == "cuda" else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=25))
