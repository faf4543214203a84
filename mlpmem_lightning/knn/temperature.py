"""The memory targets' kNN temperature as an explicit rule: T = c × the median neighbour squared distance.

The kNN-LM chooses its T on valid (:mod:`mlpmem_lightning.lightning.temperature_grid`); the targets are built
before any evaluation, so a study gives them T by a rule that scales with the key width instead of a constant
(squared L2 distances grow with the width, and one T flattens the weights at one width and sharpens them at
another). The median is taken over the k neighbours (the query's own row dropped) of a seeded sample of datastore
rows, searched as the targets themselves are: the same settings, the same index.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mlpmem_lightning.core.distributed import pick_device
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.distributions import drop_self
from mlpmem_lightning.knn.settings import TargetSettings

SAMPLE_ROWS = 4096  # rows whose neighbours give the median: its spread over seeds is far below a grid step of 2
# c of the rule: with T = 0.1 × median, neighbours at the median distance and at 0.9 × median differ by e^1 in
# weight (a 10% spread in distance is a factor e), so the targets are peaked on the nearest neighbours without
# being one-hot; T = 16 at d = 64 instead gave ~1013 of 1024 neighbours nearly equal weight (issue #15).
DEFAULT_SCALE = 0.1
log = logging.getLogger(__name__)


def median_neighbour_distance(datastore: str | Path, settings: TargetSettings, rows: int = SAMPLE_ROWS,
                              seed: int = 0, device: str = "auto") -> float:
    """Median squared L2 distance from a seeded sample of rows to their k nearest other rows (float64)."""
    from mlpmem_lightning.knn.search import open_searcher, resolve_backend
    from mlpmem_lightning.knn.targets import ensure_index

    start = time.monotonic()
    ds, dev = Datastore(datastore), pick_device(device)
    backend = resolve_backend(settings.index, settings.backend, dev)
    if backend.faiss_index:
        ensure_index(ds.path, settings)
    searcher = open_searcher(ds, replace(settings, backend=backend.name), dev)
    sample = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(rows, len(ds)), replace=False))
    queries = torch.from_numpy(np.asarray(ds.keys[sample], dtype=np.float32)).to(dev)
    k = min(settings.k, len(ds) - 1)
    dist, ids = drop_self(*searcher.search(queries, k + 1), torch.from_numpy(sample).to(dev))
    found = dist[ids >= 0].double()
    median = float(found.median()) if len(found) else float("nan")
    log.info("temperature rule: median neighbour distance %.4g over %d rows in %.1f s (searcher built and searched)",
             median, len(sample), time.monotonic() - start)
    return median


def scaled_temperature(datastore: str | Path, settings: TargetSettings, scale: float = DEFAULT_SCALE) -> float:
    """T = ``scale`` × the median neighbour squared distance (:func:`median_neighbour_distance`)."""
    if not scale > 0:
        raise UserError(f"the temperature scale {scale!r} must be > 0: fix knn_temperature_scale")
    median = median_neighbour_distance(datastore, settings)
    if not (np.isfinite(median) and median > 0):
        raise UserError(f"{datastore}: the median neighbour distance is {median} (all keys equal?): set the targets' "
                        "temperature explicitly (knn: {temperature: T})")
    return scale * median


def recorded_temperature(out: str | Path) -> float | None:
    """The T of targets already finished in ``out``, from the manifest alone (no hashing of the arrays:
    build_targets checks them when it reuses them); None when they are not built yet, or unfinished."""
    from mlpmem_lightning.core.artifacts import read_manifest
    from mlpmem_lightning.knn.targets import KIND

    try:
        return float(read_manifest(out, KIND, ("temperature",), check=False)["temperature"])
    except UserError:
        return None


def targets_settings(settings: TargetSettings, scale: float | None, datastore: str | Path, out: str | Path
                     ) -> TargetSettings:
    """The settings the targets are built with: ``settings`` as given (``scale`` None), or with T from the rule.

    Targets already finished in ``out`` give their recorded T (the rule is deterministic: same datastore, same
    sample, same T), so a resumed study does not search the sample again.
    """
    if scale is None:
        return settings
    recorded = recorded_temperature(out)
    return replace(settings, temperature=recorded if recorded is not None else
                   scaled_temperature(datastore, settings, scale))
