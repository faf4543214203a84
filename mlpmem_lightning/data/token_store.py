"""`mlpmem prepare`: corpus -> document split -> tokenizer -> token store.

The token store is the artifact of DESIGN.md: ``{train,valid,test}.npy`` (1-D uint16
when the vocabulary has at most 65535 entries, else uint32), ``tokenizer.json`` and
``manifest.json`` written last. Documents are split (not tokens) so no document leaks
across splits; each document is followed by the separator token.

Tokenization is a batched, multi-process ``datasets.map`` whose results go to Arrow
files on disk, and each split's array is filled through a memory map, so at most one
split's tokens are ever in memory. A rerun with the same settings reuses the store; a
rerun after a crash (no manifest, the writer's marker) rebuilds it from scratch, which is
deterministic, so the result is byte-identical either way (``core.writer.ArtifactWriter``).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from tokenizers import Tokenizer

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.writer import ArtifactWriter
from mlpmem_lightning.data.tokenizer import (
    TOKENIZER_FILE,
    load_tokenizer,
    read_tokenizer,
    separator_id,
    tokenizer_fingerprint,
    train_bpe,
)

log = logging.getLogger(__name__)
KIND = "token_store"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PrepareSettings:
    """Everything that determines a token store's bytes (recorded in the manifest)."""

    corpus: str = "wiki-summaries"
    tokenizer: str = "bpe"
    vocab_size: int = 8192
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0
    max_documents: int | None = None


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def split_documents(n_docs: int, valid_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Deterministic document-level split: a seeded permutation, cut in three."""
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise UserError("valid and test fractions must be in (0, 1) and sum below 1: e.g. --valid-fraction 0.05")
    n_valid = max(1, round(n_docs * valid_fraction))
    n_test = max(1, round(n_docs * test_fraction))
    if n_docs - n_valid - n_test < 1:
        raise UserError(f"the corpus has only {n_docs} documents: need at least 3 to make train/valid/test splits")
    order = np.random.default_rng(seed).permutation(n_docs)
    parts = {"valid": order[:n_valid], "test": order[n_valid : n_valid + n_test], "train": order[n_valid + n_test :]}
    return {k: np.sort(v) for k, v in parts.items()}


def source_identity(corpus: str) -> dict[str, Any]:
    """What decides the documents besides the settings: the cleaners' version and, for a local corpus, its content
    hash, recomputed on every run so that an edited corpus is never reused stale."""
    from mlpmem_lightning.data.corpora import CLEANING_VERSION, corpus_info

    local = Path(corpus).expanduser().exists()
    hub = {"hf_layout": corpus_info(corpus)["layout"]} if corpus.startswith("hf:") else {}  # own splits, documents
    return {"cleaning": CLEANING_VERSION, **({"sha256": corpus_info(corpus)["sha256"]} if local else {}), **hub}


def prepare(
    settings: PrepareSettings, out: str | Path, num_proc: int | None = None, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Build (or reuse) the token store for ``settings`` in ``out``; returns its manifest."""
    out = Path(out)
    corpus = settings.corpus if Path(settings.corpus).exists() else None  # a local corpus is an input
    identity = {"settings": asdict(settings), "source": source_identity(settings.corpus)}
    if settings.tokenizer != "bpe":  # a tokenizer given by path: its content, not its path, decides the ids
        identity["tokenizer_source"] = {"fingerprint": tokenizer_fingerprint(load_tokenizer(settings.tokenizer))}
    writer = ArtifactWriter(out, KIND, identity, "is a token store built with other settings", inputs=(corpus,),
                            added=("source", "tokenizer_source"))
    if (manifest := writer.reuse()) is not None:
        return manifest
    with writer.open(resume=False):  # a partial store is a crashed run: rebuilt from nothing (deterministic)
        return _build(settings, writer, num_proc or min(4, os.cpu_count() or 1), cache_dir)


def _build(settings: PrepareSettings, writer: ArtifactWriter, num_proc: int, cache_dir: str | Path | None
           ) -> dict[str, Any]:
    from mlpmem_lightning.data.corpora import corpus_info, load_corpus

    out = writer.out
    from mlpmem_lightning.data.hub import own_splits

    docs = load_corpus(settings.corpus, cache_dir=cache_dir)
    splits = own_splits(docs, settings.max_documents)  # a benchmark's own split (hf:), never re-split
    if splits is None:
        if settings.max_documents is not None:
            docs = docs.select(range(min(settings.max_documents, len(docs))))
        parts = split_documents(len(docs), settings.valid_fraction, settings.test_fraction, settings.seed)
        splits = {name: docs.select(idx) for name, idx in parts.items()}
    else:
        log.info("%s: the data set's own train/validation/test splits are kept", settings.corpus)

    log.info("tokenizer: %s", settings.tokenizer)
    if settings.tokenizer == "bpe":
        tok = train_bpe((t for t in splits["train"]["text"]), settings.vocab_size)
    else:
        tok = load_tokenizer(settings.tokenizer)
    vocab = tok.get_vocab_size()
    tok.save(str(out / TOKENIZER_FILE))

    work = out / "_work"
    work.mkdir()
    counts, hashes = {}, {}
    for name, ds in splits.items():
        counts[name] = _write_split(ds, tok, out / f"{name}.npy", work / name, num_proc, token_dtype(vocab))
        if counts[name] == 0:
            raise UserError(f"the {name} split of {settings.corpus!r} has no tokens: use a larger corpus")
        hashes[name] = artifacts.hash_file(out / f"{name}.npy")
    shutil.rmtree(work)

    info = corpus_info(settings.corpus, cache_dir=cache_dir)
    tok_hash = artifacts.hash_file(out / TOKENIZER_FILE)
    fingerprint = artifacts.hash_json({"tokens": hashes, "tokenizer": tok_hash})
    return writer.finish(lambda: {
        "corpus": info,
        "tokenizer": {"file": TOKENIZER_FILE, "sha256": tok_hash, "separator_id": separator_id(tok),
                      "fingerprint": tokenizer_fingerprint(tok)},
        "vocab_size": vocab,
        "dtype": token_dtype(vocab).name,
        "documents": {k: int(len(v)) for k, v in splits.items()},
        "tokens": counts,
        "sha256": hashes,
        "fingerprint": fingerprint,
    }, files=(*(f"{name}.npy" for name in SPLITS), TOKENIZER_FILE))


def _write_split(ds, tok: Tokenizer, path: Path, work: Path, num_proc: int, dtype: np.dtype) -> int:
    """Tokenize one split with a multi-process ``map`` to disk, then fill a memory-mapped array."""
    sep = separator_id(tok)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids = [e.ids + [sep] for e in tok.encode_batch(batch["text"])]
        return {"ids": ids, "n": [len(x) for x in ids]}

    work.mkdir()
    encoded = ds.map(
        encode,
        batched=True,
        batch_size=256,
        num_proc=num_proc if len(ds) >= 4 * num_proc else None,
        remove_columns=ds.column_names,
        cache_file_name=str(work / "tokens.arrow"),
        desc=f"tokenizing {path.stem}",
    )
    total = int(pc.sum(encoded.data.column("n")).as_py() or 0)
    tmp = artifacts.tmp_path(path)
    arr = artifacts.allocate_npy(tmp, dtype, (total,))
    offset = 0
    for batch in encoded.with_format("arrow").iter(batch_size=4096):
        flat = pc.list_flatten(batch["ids"]).to_numpy()
        arr[offset : offset + len(flat)] = flat
        offset += len(flat)
    arr.flush()
    del arr
    os.replace(tmp, path)
    return total


class TokenStore:
    """Read side of a finished token store: memory-mapped splits and its tokenizer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = artifacts.read_manifest(self.path, KIND, required=("vocab_size", "tokens", "fingerprint"))

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}: choose one of {', '.join(SPLITS)}")
        arr = artifacts.load_npy(self.path / f"{name}.npy")
        if arr.ndim != 1 or len(arr) != self.manifest["tokens"][name]:
            raise UserError(f"{self.path / name}.npy does not match its manifest: "
                            f"delete {self.path} and re-run prepare")
        return arr

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return read_tokenizer(self.path / TOKENIZER_FILE)

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        """Its tokenizer's vocabulary/merges hash (recorded since stores carry it; computed for older ones)."""
        return self.manifest["tokenizer"].get("fingerprint") or tokenizer_fingerprint(self.tokenizer)

    def check_tokenizer(self, fingerprint: str | None, decoder: str) -> None:
        """Refuse a decoder whose tokenizer maps text to other ids than this store's (``None``: unknown, not
        checked): its predictions would be scored against tokens of another vocabulary."""
        if fingerprint is not None and fingerprint != self.tokenizer_fingerprint:
            raise UserError(f"the decoder {decoder} has another tokenizer (fingerprint {fingerprint}) than token store "
                            f"{self.path} ({self.tokenizer_fingerprint}): tokenize the corpus with the decoder's own "
                            f"tokenizer (mlpmem prepare --tokenizer {decoder})")
