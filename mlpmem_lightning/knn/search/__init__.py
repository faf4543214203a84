"""The search backend registry: name -> how the backend's searcher is built from a datastore.

Every consumer (``mlpmem targets``, ``KNNLM``, ``generate``, the sweep spec, ``mlpmem bench``) finds backends
here, so adding one is one file defining its ``Searcher`` and a ``Backend`` entry (see ``base.py``) plus one
line in ``REGISTRY`` below. Its ``self_search`` (row chunks by default) is what ``targets`` runs.

- ``torch`` (``ivf.py``, with ``exact.py``): ``TorchExact`` for flat, ``TorchIVF`` over the stored faiss
  index's lists for ivfflat/ivfpq; certified exact distances.
- ``clustered`` (``clustered.py``): ``ClusteredIVF``, one GEMM per IVF list, its own cached k-means.
- ``faiss`` (``faiss_backend.py``): the stored faiss index, optional exact re-rank.

``auto`` picks torch exact for flat and clustered for IVF on CUDA (faiss-gpu is usually missing there, and
per-query probing is too slow at 10M rows), faiss on CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.search import clustered, faiss_backend, ivf
from mlpmem_lightning.knn.search.base import LOAD_CHUNK, Backend, Searcher
from mlpmem_lightning.knn.search.clustered import ClusteredIVF
from mlpmem_lightning.knn.search.exact import TorchExact
from mlpmem_lightning.knn.search.faiss_backend import FaissSearcher
from mlpmem_lightning.knn.search.ivf import TorchIVF
from mlpmem_lightning.knn.settings import INDEXES, KNN, KNNSettings

__all__ = ["AUTO", "REGISTRY", "Backend", "ClusteredIVF", "FaissSearcher", "Searcher", "TorchExact", "TorchIVF",
           "choices", "make_searcher", "open_searcher", "register", "resolve_backend", "unregister"]
log = logging.getLogger(__name__)
AUTO = "auto"
REGISTRY: dict[str, Backend] = {b.name: b for b in (
    ivf.BACKEND,
    clustered.BACKEND,
    faiss_backend.BACKEND,
)}


def register(backend: Backend) -> None:
    """Add a backend at run time (a plug-in, a test's toy backend); its name must be new."""
    if backend.name == AUTO or backend.name in REGISTRY:
        raise ValueError(f"search backend {backend.name!r} is already registered")
    REGISTRY[backend.name] = backend


def unregister(name: str) -> None:
    REGISTRY.pop(name)


def choices() -> tuple[str, ...]:
    """What ``--backend`` accepts: ``auto`` and every registered name."""
    return (AUTO, *REGISTRY)


def resolve_backend(index: str, backend: str, device: str | torch.device) -> Backend:
    """The registry entry for ``backend`` (``auto``: by index and device; see the module docstring)."""
    if index not in INDEXES:
        raise UserError(f"unknown index {index!r}: choose one of {', '.join(INDEXES)}")
    if backend not in choices():
        raise UserError(f"unknown search backend {backend!r}: choose one of {', '.join(choices())}")
    if backend == AUTO:
        backend = "faiss" if torch.device(device).type != "cuda" else "torch" if index == "flat" else "clustered"
    entry = REGISTRY[backend]
    if index not in entry.indexes:
        raise UserError(f"the {entry.name} backend does not search --index {index}: use --index "
                        f"{' or '.join(entry.indexes)}, or another --backend")
    return entry


def open_searcher(datastore: str | Path | Datastore, settings: KNNSettings, device: str | torch.device = "cpu",
                  chunk: int = LOAD_CHUNK) -> Searcher:
    """The searcher of ``settings.backend`` for a datastore (``settings.index``: flat is exact search)."""
    dev = torch.device(device)
    entry = resolve_backend(settings.index, settings.backend, dev)
    ds = datastore if isinstance(datastore, Datastore) else Datastore(datastore)
    log.info("search: %s index, %s backend on %s over %d keys", settings.index, entry.name, dev, len(ds))
    return entry.build(ds, settings, dev, chunk)


def make_searcher(datastore: str | Path | Datastore, index: str = KNN.index, backend: str = KNN.backend,
                  device: str | torch.device = "cpu", nprobe: int = KNN.nprobe, rerank: bool = KNN.rerank,
                  chunk: int = LOAD_CHUNK, nlist: int | None = KNN.nlist) -> Searcher:
    """``open_searcher`` with the settings as keywords (the kNN-LM's and ``generate``'s options)."""
    settings = KNNSettings(index=index, backend=backend, nprobe=nprobe, rerank=rerank, nlist=nlist)
    return open_searcher(datastore, settings, device, chunk)
