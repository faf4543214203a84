"""`mlpmem datastore`: run a frozen decoder over a split and store (key, value) per position.

Row p belongs to input position p of the split and stores the key (the input of the
chosen layer's feed-forward block, after its norm) and the value (token p+1), for every
position the windows of the alignment convention cover. The forward pass stops at the
key point, so neither later layers nor the vocabulary head are computed.

The arrays are pre-allocated and filled in whole batches of windows; about every
``SAVE_ROWS`` rows ``progress.rank<r>.json`` records how many windows are done, so a killed run resumes at the
next chunk and, the batches being the same, ends with byte-identical files. Rows can be
split across ranks (``rank``/``world_size``): each rank fills its own contiguous range. Reuse, resume,
the lock and the manifest are :class:`~mlpmem_lightning.core.writer.ArtifactWriter`'s; the window cut is
the one of :mod:`mlpmem_lightning.data.windows`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.distributed import pick_device
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.writer import ArtifactWriter, BackgroundSaves
from mlpmem_lightning.data.token_store import TokenStore
from mlpmem_lightning.data.windows import window_count, window_starts
from mlpmem_lightning.models.decoder import context_length, ffn_inputs
from mlpmem_lightning.models.loading import load_decoder

KIND = "datastore"
SAVE_ROWS = 1 << 20  # rows between progress records (flushed behind the next batches: BackgroundSaves)


@dataclass(frozen=True)
class DatastoreSettings:
    """Everything that determines the datastore's bytes (besides the two fingerprints)."""

    split: str = "train"
    layer: int = -1
    seq_len: int | None = None  # default: the decoder's training seq_len
    batch_size: int = 32  # windows per forward; part of the byte-identity contract
    precision: str = "32"  # "32" or "bf16" (autocast on CUDA)


def build_datastore(decoder: str | Path, data: str | Path, out: str | Path, settings: DatastoreSettings,
                    device: str = "auto", rank: int = 0, world_size: int = 1,
                    barrier: Callable[[], None] = lambda: None) -> dict[str, Any] | None:
    """Build (resume, or reuse) the datastore; returns the manifest (rank 0) or None (other ranks).

    With several ranks, rank 0 allocates the arrays, ``barrier`` (e.g. ``torch.distributed.barrier``)
    lets the others open them, each fills its own window range, and rank 0 writes the manifest after a
    second barrier.
    """
    out, store = Path(out), TokenStore(data)
    dec = load_decoder(decoder)
    seq_len = settings.seq_len or dec.seq_len
    if seq_len is None:
        raise UserError(f"{decoder} does not record its seq_len: pass --seq-len")
    settings = DatastoreSettings(**{**asdict(settings), "seq_len": seq_len})
    _check_inputs(dec, store, settings)
    identity = {"settings": asdict(settings), "decoder_fingerprint": dec.fingerprint,
                "token_store_fingerprint": store.fingerprint}
    writer = ArtifactWriter(out, KIND, identity, "is a datastore of another decoder, token store or settings",
                            inputs=(decoder, data), rank=rank, world_size=world_size, barrier=barrier)
    if (manifest := writer.reuse()) is not None:
        return manifest

    tokens = store.split(settings.split)
    n_windows = window_count(len(tokens), seq_len)
    n_rows, d = n_windows * seq_len, dec.net.config.hidden_size

    def allocate() -> None:  # values are known up front: written whole; keys filled window by window
        artifacts.allocate_npy(out / "keys.npy", np.float16, (n_rows, d)).flush()
        artifacts.atomic_save_npy(out / "values.npy", np.asarray(tokens[1:n_rows + 1], dtype=np.int32))

    with writer.open(allocate):
        keys = np.load(out / "keys.npy", mmap_mode="r+")
        lo, hi = _shard(n_windows, rank, world_size, settings.batch_size)
        _fill(dec.net, tokens, keys, writer, settings, lo, hi, pick_device(device))
        return writer.finish(lambda: {
            "decoder": str(decoder), "token_store": str(data), "split": settings.split, "layer": settings.layer,
            "seq_len": seq_len, "N": n_rows, "d": d, "keys_dtype": "float16",
            "values_sha256": artifacts.hash_file(out / "values.npy"), "fingerprint": artifacts.hash_json(identity),
        }, files=("keys.npy", "values.npy"))


def _check_inputs(dec, store: TokenStore, s: DatastoreSettings) -> None:
    store.check_tokenizer(dec.tokenizer_fingerprint, dec.source)
    if dec.data_fingerprint is not None and dec.data_fingerprint != store.fingerprint:
        raise UserError(f"the decoder was trained on token store {dec.data_fingerprint} but --data {store.path} has "
                        f"{store.fingerprint}: pass the token store it was trained on")
    if s.seq_len > context_length(dec.net):
        raise UserError(f"seq_len {s.seq_len} exceeds the decoder's context {context_length(dec.net)}")
    if s.precision not in ("32", "bf16"):
        raise UserError(f"precision {s.precision!r}: choose 32 or bf16")
    if dec.net.config.vocab_size < store.vocab_size:
        raise UserError(f"the decoder's vocabulary ({dec.net.config.vocab_size}) is smaller than the token "
                        f"store's ({store.vocab_size}): pass the token store the decoder was trained on")


def _shard(n_windows: int, rank: int, world_size: int, batch: int) -> tuple[int, int]:
    """Rank ``rank``'s windows, cut at multiples of ``batch``.

    So every rank runs exactly the batches one process would (same windows, same shapes): a GPU
    picks its GEMM kernels by shape, and a batch cut differently gives keys that differ in the last bit.
    """
    n_batches = -(-n_windows // batch)
    bounds = np.minimum(np.linspace(0, n_batches, world_size + 1).astype(int) * batch, n_windows)
    return int(bounds[rank]), int(bounds[rank + 1])


def _fill(net, tokens: np.ndarray, keys: np.ndarray, writer: ArtifactWriter, s: DatastoreSettings, lo: int,
          hi: int, device: torch.device) -> None:
    """Compute keys for windows [lo, hi) in batches, recording progress after each flushed chunk."""
    state = writer.progress()
    done = state["done"] if state else lo
    net.to(device)
    L, B = s.seq_len, s.batch_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.precision == "bf16")
    saved = done
    with BackgroundSaves(writer, (keys,)) as saves, \
            tqdm(total=hi - lo, initial=done - lo, desc=f"datastore rank {writer.rank}", unit="win") as bar:
        for start in range(done, hi, B):
            stop = min(start + B, hi)
            x = torch.from_numpy(tokens[window_starts(start, stop, L)].astype(np.int64)).to(device)
            with autocast:
                h = ffn_inputs(net, x, s.layer).float()
            if not torch.isfinite(h).all():
                raise UserError(f"the decoder produced NaN/inf hidden states in windows {start}-{stop}: "
                                "the checkpoint is broken; retrain or pick another checkpoint")
            keys[start * L:stop * L] = h.reshape(-1, h.shape[-1]).cpu().numpy().astype(np.float16)
            if stop == hi:
                saves.last({"done": stop})
            elif (stop - saved) * L >= SAVE_ROWS and saves.start({"done": stop}):  # flushed behind the next batches
                saved = stop
            bar.update(stop - start)


class Datastore:
    """Read side of a finished datastore: its manifest and memory-mapped keys and values, checked against it.

    The one way a datastore is opened: search backends, index builds, targets, the kNN-LM, ``generate`` and
    the benchmarks all read it here, so a truncated or mismatched file gets the same one-line error everywhere.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = artifacts.read_manifest(self.path, KIND, required=("N", "d"))
        self.keys = artifacts.load_npy(self.path / "keys.npy")
        self.values = artifacts.load_npy(self.path / "values.npy")
        n, d = self.manifest.get("N"), self.manifest.get("d")
        if self.keys.ndim != 2 or self.keys.shape != (n, d) or self.values.shape != (n,):
            raise UserError(f"{self.path}: keys {self.keys.shape} / values {self.values.shape} do not match the "
                            f"manifest ({n}, {d}): delete it and rebuild with `mlpmem datastore`")

    @property
    def fingerprint(self) -> str | None:
        return self.manifest.get("fingerprint")

    def __len__(self) -> int:
        return int(self.manifest["N"])

    def check_data(self, token_store_fingerprint: str, seq_len: int, what: str = "datastore",
                   evaluated: str | None = None) -> None:
        """Refuse data this datastore was not built on: another token store, or another window cut; and, for a
        kNN-LM evaluating split ``evaluated``, a datastore of that very split (each position would find itself)."""
        m = self.manifest
        if m.get("token_store_fingerprint") != token_store_fingerprint:
            raise UserError(f"{what} {self.path} comes from token store {m.get('token_store_fingerprint')} but "
                            f"--data.token_store has {token_store_fingerprint}: pass the matching --data.token_store")
        if evaluated is not None and m.get("split") == evaluated:
            raise UserError(f"{what} {self.path} was built from the {evaluated} split, the split being evaluated "
                            "(every position would find itself): build one from train with `mlpmem datastore "
                            "--split train` and pass that")
        if m["seq_len"] != seq_len:
            raise UserError(f"{what} {self.path} uses seq_len {m['seq_len']} but --data.seq_len is {seq_len}: "
                            f"pass --data.seq_len {m['seq_len']}")
