"""kNN settings: one dataclass, one default per setting, shared by every place that searches.

``mlpmem targets``, the ``KNNLM`` module, ``mlpmem generate`` and sweep specs all take their defaults from
here, so changing a default is one edit. Torch-free, so the CLI can build its parser without importing torch.

Defaults follow Khandelwal et al. (k=1024, T=16 on WikiText-103; nprobe 32 of 4096 lists). T=16 is *not*
right at every key width (squared distances grow with it): choose T on valid for your decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

INDEXES = ("flat", "ivfflat", "ivfpq")  # flat is exact search


@dataclass(frozen=True)
class KNNSettings:
    """How neighbours are found and weighted."""

    index: str = "flat"  # flat (exact) | ivfflat | ivfpq
    k: int = 1024  # neighbours per query
    temperature: float = 16.0  # T of softmax(-d/T), d the squared L2 distance
    nprobe: int = 32  # IVF lists scanned per query
    nlist: int | None = None  # IVF lists (None: about N/256, at most 4096)
    rerank: bool = False  # re-rank approximate candidates with exact distances
    backend: str = "auto"  # search backend: a name of knn.search.REGISTRY, or auto (by index and device)


@dataclass(frozen=True)
class TargetSettings(KNNSettings):
    """kNN settings plus what ``mlpmem targets`` keeps and how it builds the faiss index."""

    keep: int = 512  # K: tokens kept per row; keeps 99.1% of the mass on the embedded corpus (k=1024, T=16)
    chunk: int = 4096  # rows per search on the row-chunk path; part of the byte-identity contract
    m: int = 64  # PQ sub-quantizers
    nbits: int = 8  # bits per PQ code
    train_size: int = 1_000_000  # keys sampled to train the index

    def identity(self) -> dict[str, Any]:
        """What determines the targets' bytes besides the backend (recorded on its own in the manifest)."""
        return {k: v for k, v in asdict(self).items() if k != "backend"}


KNN = KNNSettings()
TARGETS = TargetSettings()
