"""`LMDataModule`: token-store windows in the alignment convention of DESIGN.md.

A split's stream is cut into non-overlapping windows of ``seq_len`` inputs: window j
holds inputs ``[j*L, (j+1)*L)`` and labels ``[j*L+1, (j+1)*L+1)``, and the batch's
``positions`` entry is ``j*L``, the datastore/target row of the window's first input.
Every stage (fit, datastore, targets, evaluation) reads windows through this module,
so rows line up everywhere.

Training runs on a token budget: the sampler yields exactly the samples the budget
needs, cycling through one seeded permutation of the windows per epoch, and starts
where a resumed run left off (from the restored global step), so an interrupted fit
sees the same data order as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.token_store import TokenStore


class TokenWindows(Dataset):
    """Windows of one split; fetched a whole batch at a time by fancy indexing.

    With ``extras`` (name -> .npy path of an array with one row per position, e.g. the kNN
    targets' ``ids``/``probs`` or the datastore's ``keys``), each batch also carries those
    rows for every position of every window, [B, L, ...], read straight from the memory
    maps: sparse targets stay sparse.
    """

    def __init__(self, path: Path, seq_len: int, n_tokens: int, extras: dict[str, Path] | None = None):
        self.path, self.seq_len = path, seq_len
        self.n_windows = (n_tokens - 1) // seq_len
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


def _passthrough(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class BudgetSampler(DistributedSampler):
    """Samples for a token budget: per-epoch seeded permutations, resumable, rank-aware.

    Global sample i of step s lives at ``s*B*world + rank*B + b``, so the global batch
    of every step is the same whatever the number of GPUs. Subclassing
    ``DistributedSampler`` tells Lightning not to wrap it again.
    """

    def __init__(self, n_windows: int, batches: int, batch_size: int, seed: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.n_windows, self.batches, self.batch_size = n_windows, batches, batch_size
        self.seed, self.start_batch, self.rank, self.world = seed, start_batch, rank, world_size
        self.epoch = 0

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
        bounds = np.linspace(0, n, world_size + 1).astype(int)
        self.lo, self.hi = int(bounds[rank]), int(bounds[rank + 1])

    def __len__(self) -> int:
        return self.hi - self.lo

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.lo, self.hi))

    def set_epoch(self, epoch: int) -> None:
        pass


class LMDataModule(L.LightningDataModule):
    """The shared data module of every model: windows of a token store.

    Args:
        token_store: directory made by ``mlpmem prepare``.
        seq_len: inputs per window (the alignment unit of every stage).
        batch_size: windows per batch per device.
        eval_batch_size: windows per validation/test batch (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: seed of the per-epoch window permutations.
        corpus: if set and ``token_store`` does not exist yet, ``prepare_data`` builds it
            from this corpus with default settings.
        fingerprint: expected token-store fingerprint; a different store is refused.
        eval_windows: cap on validation/test windows (``None``: the whole split).
        targets: kNN targets directory (``mlpmem targets``): training batches then carry ``knn_ids``
            and ``knn_probs`` [B, L, K] for every position; set ``serve_keys`` (MemoryLM's offline mode
            does) to also serve the datastore's stored ``keys`` [B, L, d].
    """

    def __init__(self, token_store: str = "runs/tokens/wiki-summaries", seq_len: int = 256, batch_size: int = 32,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 corpus: str | None = None, fingerprint: str | None = None, eval_windows: int | None = None,
                 targets: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        if seq_len < 1 or batch_size < 1:
            raise UserError("seq_len and batch_size must be positive integers")
        self.token_store, self.seq_len, self.batch_size = Path(token_store), seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed, self.corpus = num_workers, seed, corpus
        self.expected_fingerprint, self.eval_windows = fingerprint, eval_windows
        self.targets = Path(targets) if targets else None
        self.serve_keys = False
        self._store: TokenStore | None = None

    def prepare_data(self) -> None:
        if self.corpus is not None and not (self.token_store / "manifest.json").is_file():
            from mlpmem_lightning.data.token_store import PrepareSettings, prepare

            prepare(PrepareSettings(corpus=self.corpus), self.token_store)

    @property
    def store(self) -> TokenStore:
        if self._store is None:
            self._store = TokenStore(self.token_store)
            if self.expected_fingerprint and self._store.fingerprint != self.expected_fingerprint:
                raise UserError(
                    f"token store {self.token_store} has fingerprint {self._store.fingerprint}, the config expects "
                    f"{self.expected_fingerprint}: point --data.token_store at the matching store"
                )
        return self._store

    @property
    def vocab_size(self) -> int:
        return self.store.vocab_size

    @property
    def fingerprint(self) -> str:
        return self.store.fingerprint

    def targets_info(self) -> tuple[dict, dict]:
        """Manifests of the targets and of their datastore, checked against this data."""
        from mlpmem_lightning.knn.datastore import Datastore
        from mlpmem_lightning.knn.targets import KNNTargets

        targets = KNNTargets(self.targets)
        datastore = Datastore(targets.manifest["datastore"])
        t, d = targets.manifest, datastore.manifest
        if t["datastore_fingerprint"] != d["fingerprint"]:
            raise UserError(f"targets {self.targets} were built from datastore {t['datastore_fingerprint']}, but "
                            f"{datastore.path} is {d['fingerprint']}: rebuild the targets with `mlpmem targets`")
        datastore.check_data(self.fingerprint, self.seq_len, what="the datastore of the targets")
        return t, d

    def windows(self, split: str) -> TokenWindows:
        n_tokens = self.store.manifest["tokens"][split]
        extras = {}
        if self.targets is not None:
            targets, datastore = self.targets_info()
            if split == datastore["split"]:
                extras = {"knn_ids": self.targets / "ids.npy", "knn_probs": self.targets / "probs.npy"}
                if self.serve_keys:
                    extras["keys"] = Path(targets["datastore"]) / "keys.npy"
        ds = TokenWindows(self.token_store / f"{split}.npy", self.seq_len, n_tokens, extras)
        if len(ds) == 0:
            raise UserError(
                f"the {split} split has {n_tokens} tokens, fewer than one window of seq_len={self.seq_len}+1: "
                "lower --data.seq_len or use a larger corpus"
            )
        return ds

    def setup(self, stage: str) -> None:
        self.store.split("train")  # validates the arrays against the manifest once, early
        if self.targets is not None:
            self.targets_info()

    def _loader(self, ds: TokenWindows, sampler: DistributedSampler, batch_size: int) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=_passthrough, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        ds = self.windows("train")
        accum = t.accumulate_grad_batches if t is not None else 1
        max_steps = t.max_steps if t is not None and t.max_steps > 0 else math.ceil(len(ds) / self.batch_size)
        start = t.global_step * accum if t is not None else 0
        sampler = BudgetSampler(len(ds), max_steps * accum, self.batch_size, self.seed, start,
                                t.global_rank if t else 0, t.world_size if t else 1)
        return self._loader(ds, sampler, self.batch_size)

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.windows(split)
        n = len(ds) if self.eval_windows is None else min(len(ds), self.eval_windows)
        t = self.trainer
        return self._loader(ds, ShardSampler(n, t.global_rank if t else 0, t.world_size if t else 1),
                            self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
