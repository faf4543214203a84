"""Synthetic datastores for the benchmarks and the tests: Gaussian-mixture keys and Zipf values.

``synthetic_datastore`` writes a real datastore directory through the artifact writer, so every
benchmark opens it the way a trained decoder's datastore is opened (``knn.datastore.Datastore``) and a
rerun with the same sizes reuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.writer import ArtifactWriter
from mlpmem_lightning.knn.datastore import KIND

# |shared component|^2 over the keys' mean squared distance from it. A decoder's keys share one: 0.23 and 0.35 for
# the demo's n0.1m and n0.85m, 1.19 for SmolLM2 (first 50k keys). A mixture centred at 0 has none, and there the
# clustered IVF's probe-set defect of 2026-12-02 did not show (the bench reported recall 0.966 while real keys got 0.1).
SHARED = 0.5


def fill_mixture_keys(keys: np.ndarray, seed: int = 0, per_centre: int = 1024, chunk: int = 1 << 20) -> np.ndarray:
    """Fill float16 ``keys`` [N, d] (an array or a memory map) with a Gaussian mixture around a shared component.

    About ``per_centre`` keys per component, so a query's k=1024 neighbours mostly share its
    component and IVF lists have the uneven, clustered occupancy of real hidden states. All components sit around
    one shared vector (``SHARED``), as a decoder's keys do. Drawn in chunks on the GPU when there is one (10M x 256
    normals take minutes on a CPU).
    """
    n, d = keys.shape
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(seed)
    centres = max(1, n // per_centre)
    shared = torch.randn(d, generator=g, device=dev) * (SHARED * 5) ** 0.5  # the spread is 4d (means) + d (noise)
    means = torch.randn(centres, d, generator=g, device=dev) * 2 + shared
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        which = torch.randint(0, centres, (m,), generator=g, device=dev)
        keys[s:s + m] = (means[which] + torch.randn(m, d, generator=g, device=dev)).half().cpu().numpy()
    return keys


def zipf_values(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Token values [n] int32 with a Zipf-like frequency profile, as text has."""
    return (np.random.default_rng(seed).zipf(1.2, size=n) % vocab).astype(np.int32)


def synthetic_datastore(path: str | Path, n: int, d: int, vocab: int, seed: int = 0) -> Path:
    """A datastore directory of ``n`` mixture keys of width ``d`` and Zipf tokens below ``vocab`` (reused if there)."""
    path = Path(path)
    identity = {"synthetic": {"n": n, "d": d, "vocab": vocab, "seed": seed, "shared": SHARED}}
    writer = ArtifactWriter(path, KIND, identity, "is a datastore of other synthetic sizes")
    if writer.reuse() is not None:
        return path

    def allocate() -> None:  # generated whole: a killed run starts again
        keys = np.lib.format.open_memmap(path / "keys.npy", mode="w+", dtype=np.float16, shape=(n, d))
        fill_mixture_keys(keys, seed).flush()
        artifacts.atomic_save_npy(path / "values.npy", zipf_values(n, vocab, seed))

    with writer.open(allocate):
        writer.finish(lambda: {"N": n, "d": d, "fingerprint": f"synthetic-{n}-{d}-{vocab}-{seed}-shared{SHARED}",
                               "layer": -1, "seq_len": 256})
    return path
