"""`LMDataModule`: the shared data module of every model, windows of a token store.

The window cut, the dataset and the samplers live in :mod:`.windows`; this module binds them to a
token store, optional kNN targets and the Trainer (budget, ranks, resume point).
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.sliding import SlidingWindows, check_sliding
from mlpmem_lightning.data.token_store import TokenStore
from mlpmem_lightning.data.windows import BudgetSampler, ShardSampler, TokenWindows, passthrough


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
        eval_context: validation/test on sliding windows of this many inputs (the papers' protocol, e.g. 2560;
            :mod:`.sliding`) instead of the ``seq_len`` cut; every label is scored once. ``None``: the cut.
        eval_stride: new labels scored per sliding window (e.g. 512; default: ``eval_context``, no overlap).
    """

    def __init__(self, token_store: str = "runs/tokens/wiki-summaries", seq_len: int = 256, batch_size: int = 32,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 corpus: str | None = None, fingerprint: str | None = None, eval_windows: int | None = None,
                 targets: str | None = None, eval_context: int | None = None, eval_stride: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        check_sliding(eval_context, eval_stride)
        self.eval_context, self.eval_stride = eval_context, eval_stride or eval_context
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
        if d.get("split", "train") != "train":
            raise UserError(f"targets {self.targets} come from a datastore of the {d['split']} split, but MemoryLM "
                            "trains on train: build the datastore with `mlpmem datastore --split train`, then its "
                            "targets")
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
                          collate_fn=passthrough, persistent_workers=self.num_workers > 0,
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

    def eval_windows_of(self, split: str) -> TokenWindows | SlidingWindows:
        """What validation/test score: the ``seq_len`` cut, or sliding windows (``eval_context``)."""
        if self.eval_context is None:
            return self.windows(split)
        n_tokens = self.store.manifest["tokens"][split]
        return SlidingWindows(self.token_store / f"{split}.npy", n_tokens, self.eval_context, self.eval_stride)

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.eval_windows_of(split)
        n = len(ds) if self.eval_windows is None else min(len(ds), self.eval_windows)
        t = self.trainer
        return self._loader(ds, ShardSampler(n, t.global_rank if t else 0, t.world_size if t else 1),
                            self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
