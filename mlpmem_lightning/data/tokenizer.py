"""Tokenizers: train a byte-level BPE on the train split, or load an existing one.

Whatever the source, the result is a ``tokenizers.Tokenizer`` plus the id of the
document separator; the token store saves it as ``tokenizer.json`` (loadable with
``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``) so every later stage
decodes with exactly the tokenizer the ids came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mlpmem_lightning.core.errors import UserError

EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): no unknown tokens, any UTF-8 text round-trips."""
    if vocab_size < 257 + 1:
        raise UserError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least 258")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batches(texts), trainer=trainer)
    return tok


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer(spec: str) -> Tokenizer:
    """An existing tokenizer: a ``tokenizer.json`` file, an HF tokenizer directory,
    or a directory with GPT-2's ``vocab.json`` and ``merges.txt``."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        return read_tokenizer(path)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        return read_tokenizer(path / TOKENIZER_FILE)
    if path.is_dir() and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        tok = Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    raise UserError(
        f"cannot load tokenizer {spec!r}: pass 'bpe' to train one, a tokenizer.json, "
        "an HF tokenizer directory, or a directory with vocab.json and merges.txt"
    )


def read_tokenizer(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json``; one that ``tokenizers`` cannot parse is a one-line error."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception for JSON it cannot read
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path} is not a tokenizer.json that `tokenizers` can read ({first}): pass one saved by "
                        "`tokenizers` (or a token store's), or --tokenizer bpe") from None


def separator_id(tok: Tokenizer) -> int:
    """The document separator: ``<|endoftext|>`` or the tokenizer's own end-of-text token."""
    for name in (EOS, "</s>", "<eos>", "<|end_of_text|>"):
        idx = tok.token_to_id(name)
        if idx is not None:
            return idx
    raise UserError("the tokenizer has no end-of-text token (<|endoftext|> or </s>): "
                    "add one or train a 'bpe' tokenizer")


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """A hash of what maps text to ids (vocabulary, merges, added tokens), not of the file's bytes.

    Two ``tokenizer.json`` files written by different tools (``tokenizers``' ``save``, transformers'
    ``save_pretrained``, a GGUF conversion) differ in formatting and normaliser details that do not change
    an id; a decoder and a token store agree when this fingerprint does.
    """
    import hashlib
    import json

    model = json.loads(tok.to_str()).get("model", {})
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    vocab = tok.get_vocab(with_added_tokens=True)
    blob = json.dumps({"type": model.get("type"), "vocab": sorted(vocab.items(), key=lambda kv: kv[1]),
                       "merges": merges}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
