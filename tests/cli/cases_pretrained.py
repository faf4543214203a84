"""Bad-input catalogue rows for pretrained bases (issue #17): import-decoder, the tokenizer check, teacher targets,
base-relative memory sizes. The decoders are tiny random transformers directories (tests/pretrained_helpers.py)."""

from __future__ import annotations

from pathlib import Path

from mlpmem_lightning.data.tokenizer import read_tokenizer
from tests.cli.catalogue import TRAINER, Case, _text
from tests.pretrained_helpers import save_hf_dir, tiny_tokenizer


def _foreign_tokenizer_decoder(t: Path, fx) -> Path:
    """A decoder as wide in vocabulary as the token store, but with a tokenizer of its own."""
    vocab = read_tokenizer(fx.store / "tokenizer.json").get_vocab_size()
    return save_hf_dir(t / "foreign", "llama", tiny_tokenizer(), vocab_size=vocab)


def _student(t: Path, fx) -> Path:
    """Another decoder with the token store's own tokenizer: its targets are not this one's."""
    return save_hf_dir(t / "student", "llama", read_tokenizer(fx.store / "tokenizer.json"))


def _memory_fit(t: Path, fx, decoder: Path, *extra: str) -> list[str]:
    return ["fit", *TRAINER, "--model", "MemoryLM", "--model.decoder", str(decoder), "--data.token_store",
            str(fx.store), "--data.seq_len", "128", "--data.targets", str(fx.targets),
            "--trainer.default_root_dir", str(t / "run"), *extra]


CASES: list = [
    Case("import-decoder", "--from neither a .gguf file nor a transformers model directory", "cannot import",
         lambda t, fx: ["import-decoder", "--from", str(_text(t / "model.bin", "x")), "--out", str(t / "dec")]),
    Case("datastore", "a decoder whose tokenizer differs from the token store's", "has another tokenizer",
         lambda t, fx: ["datastore", "--decoder", str(_foreign_tokenizer_decoder(t, fx)), "--data", str(fx.store),
                        "--seq-len", "128", "--out", str(t / "ds")]),
    Case("memory", "targets of another decoder without --model.teacher", "or --model.teacher true",
         lambda t, fx: _memory_fit(t, fx, _student(t, fx), "--model.size", "x0.5")),
    Case("memory", "a base-relative memory size that is not a positive ratio", "not a positive ratio",
         lambda t, fx: _memory_fit(t, fx, _student(t, fx), "--model.size", "x0")),
]
