"""The one window cut of DESIGN.md's alignment convention, the windows dataset and its samplers.

A split's stream is cut into non-overlapping windows of ``seq_len`` inputs: window j holds inputs
``[j*L, (j+1)*L)`` and labels ``[j*L+1, (j+1)*L+1)``. Row p of the datastore and of the targets belongs to
input position p. Fit, datastore, targets and evaluation all cut through :func:`window_count` and
:func:`window_starts`, so a memory trained online sees exactly the keys the datastore stored.

Training runs on a token budget: the sampler yields exactly the samples the budget needs, cycling
through one seeded permutation of the windows per epoch, and starts where a resumed run left off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def window_count(n_tokens: int, seq_len: int) -> int:
    """Windows a split of ``n_tokens`` holds: each needs ``seq_len`` inputs plus the label after the last."""
    return max(0, (n_tokens - 1) // seq_len)


def window_starts(first: int, stop: int, seq_len: int) -> np.ndarray:
    """Input positions [stop - first, seq_len] of windows ``first .. stop - 1`` (row p = input position p)."""
    return np.arange(first * seq_len, stop * seq_len, dtype=np.int64).reshape(stop - first, seq_len)


class TokenWindows(Dataset):
    """Windows of one split; fetched a whole batch at a time by fancy indexing.

    With ``extras`` (name -> .npy path of an array with one row per position, e.g. the kNN
    targets' ``ids``/``probs`` or the datastore's ``keys``), each batch also carries those
    rows for every position of every window, [B, L, ...], read straight from the memory
    maps: sparse targets stay sparse.
    """

    def __init__(self, path: Path, seq_len: int, n_tokens: int, extras: dict[str, Path] | None = None):
        self.path, self.seq_len = path, seq_len
        self.n_windows = window_count(n_tokens, seq_len)
        self.extras = dict(extras or {})
        self._arrays: dict[str, np.ndarray] = {}  # opened lazily: memmaps must not be pickled to workers

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.extras.get(name, self.path), mmap_mode="r")
        return self._arrays[name]

    @property
    def tokens(self) -> np.ndarray:
        return self._array("tokens")

    def __len__(self) -> int:
        return self.n_windows

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([j])

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        starts = np.asarray(idx, dtype=np.int64) * self.seq_len
        rows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int64)
        chunk = torch.from_numpy(rows)
        batch = {"input_ids": chunk[:, :-1], "labels": chunk[:, 1:], "positions": torch.from_numpy(starts)}
        flat = (starts[:, None] + np.arange(self.seq_len)).reshape(-1)
        for name in self.extras:
            arr = self._array(name)
            part = np.asarray(arr[flat]).reshape(len(starts), self.seq_len, *arr.shape[1:])
            batch[name] = torch.from_numpy(part.astype(_LOADED_DTYPE.get(part.dtype.kind, part.dtype)))
        return batch


# integers become int64 (indexing), floats float32 (fp16 storage is for disk, not for arithmetic)
_LOADED_DTYPE = {"i": np.int64, "u": np.int64, "f": np.float32}


def passthrough(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collate function: ``TokenWindows.__getitems__`` already returns a whole batch."""
    return batch


class BudgetSampler(DistributedSampler):
    """Samples for a token budget: per-epoch seeded permutations, resumable, rank-aware.

    Global sample i of step s lives at ``s*B*world + rank*B + b``, so the global batch
    of every step is the same whatever the number of GPUs. It is a ``DistributedSampler`` (initialised as
    one) because that is how Lightning knows a sampler already shards by rank and must not be wrapped again.
    """

    def __init__(self, n_windows: int, batches: int, batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__(range(n_windows), num_replicas=world_size, rank=rank, shuffle=False, seed=seed)
        self.n_windows, self.batches, self.batch_size = n_windows, batches, batch_size
        self.start_batch, self.world = start_batch, world_size

    def __len__(self) -> int:
        """The whole budget, also when resuming: Lightning restores the epoch's batch index to
        ``start_batch`` and counts on from there, so a shorter length would end the epoch early
        and start a new one from ``start_batch`` again (the same batches twice)."""
        return self.batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        b, w = self.batch_size, self.world
        local = np.arange(self.start_batch * b, self.batches * b, dtype=np.int64)
        global_idx = (local // b) * b * w + self.rank * b + local % b
        epochs = global_idx // self.n_windows
        out = np.empty_like(global_idx)
        for e in np.unique(epochs):  # one permutation per epoch touched, not per sample
            perm = np.random.default_rng([self.seed, int(e)]).permutation(self.n_windows)
            mask = epochs == e
            out[mask] = perm[global_idx[mask] % self.n_windows]
        return iter(out.tolist())


class ShardSampler(DistributedSampler):
    """Evaluation order: contiguous, unshuffled, no padding (so no row counts twice)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=False)
        bounds = np.linspace(0, n, world_size + 1).astype(int)
        self.lo, self.hi = int(bounds[rank]), int(bounds[rank + 1])

    def __len__(self) -> int:
        return self.hi - self.lo

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.lo, self.hi))

    def set_epoch(self, epoch: int) -> None:
        pass


