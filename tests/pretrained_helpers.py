"""Tiny transformers models (random Llama, random GPT-2) with a tokenizer, saved as model directories: the CPU
stand-ins for a pretrained base (tests of import-decoder, export-decoder, tokenizer checks, teacher targets)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "the of and to in is was for on that with as by at from his her an were which are this be it".split()


def tiny_tokenizer(vocab_size: int = 300, seed: int = 0):
    """A byte-level BPE trained on a few made-up sentences (``seed`` changes the text, hence the merges)."""
    from mlpmem_lightning.data.tokenizer import train_bpe

    g = torch.Generator().manual_seed(seed)
    texts = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (12,), generator=g).tolist()) for _ in range(200)]
    return train_bpe(texts, vocab_size)


def tiny_model(family: str, vocab_size: int, seed: int = 0):
    """A random 2-layer causal LM of ``family`` (``llama`` or ``gpt2``) in plain transformers classes."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128)
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def save_hf_dir(path: Path, family: str, tokenizer, vocab_size: int | None = None, seed: int = 0) -> Path:
    """A transformers model directory: config + weights + a fast tokenizer (tokenizer.json) saved by transformers."""
    from transformers import PreTrainedTokenizerFast

    tiny_model(family, vocab_size or tokenizer.get_vocab_size(), seed).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(path)
    return path


def base_with_store(root: Path, name: str = "base", family: str = "llama") -> tuple[Path, Path]:
    """(a tiny random base in transformers format, its token store): 150 made-up documents tokenized with the
    base's own tokenizer, as `mlpmem prepare --tokenizer BASE` makes it."""
    import json

    from mlpmem_lightning.data.token_store import PrepareSettings, prepare

    base = save_hf_dir(root / name, family, tiny_tokenizer())
    g = torch.Generator().manual_seed(0)
    docs = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (40,), generator=g).tolist()) for _ in range(150)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prepare(PrepareSettings(corpus=str(root / "corpus.jsonl"), tokenizer=str(base)), root / "tokens")
    return base, root / "tokens"
