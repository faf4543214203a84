"""FLOP and parameter accounting follows the decoder's family: a GPT-2 decoder is counted as GPT-2.

Before the family registry, ``flops.py``, the study pipeline and ``bench`` never passed the family on, so a
GPT-2 study got Llama's counts. The flops functions now require it, and the pipeline reads it from the checkpoint.
"""

from __future__ import annotations

import pytest

from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.data.token_store import TokenStore
from mlpmem_lightning.models.decoder import build_decoder
from mlpmem_lightning.models.flops import datastore_flops, decoder_train_flops
from mlpmem_lightning.models.ladder import flops_per_token, get_size, total_params
from mlpmem_lightning.models.loading import load_decoder
from mlpmem_lightning.models.memory import memory_config, memory_flops_per_token

SEQ, BATCH, STEPS, ROWS = 64, 8, 4, 5_000


def gpt2_by_hand(d: int, n_layer: int, vocab: int, seq_len: int, context: int = 1024) -> tuple[int, int]:
    """(total parameters, training FLOPs per token) of a GPT-2 rung, counted from its modules' shapes."""
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d  # c_attn,
    non_embedding = n_layer * block + 2 * d  # c_proj, c_fc, mlp c_proj (all biased), ln_1, ln_2; final ln_f
    total = non_embedding + 2 * vocab * d + context * d  # wte, untied lm_head, wpe
    return total, 6 * (non_embedding + vocab * d) + 12 * n_layer * d * seq_len


def test_gpt2_counts_are_the_built_model_and_not_llama():
    s, vocab = get_size("200k"), 4096
    total, fpt = gpt2_by_hand(s.d_model, s.n_layer, vocab, SEQ)
    net = build_decoder(s, vocab, "gpt2")
    assert sum(p.numel() for p in net.parameters()) == total == total_params(s, vocab, "gpt2")
    assert decoder_train_flops(s, vocab, SEQ, 1000, family="gpt2") == 1000 * fpt
    assert datastore_flops(s, vocab, SEQ, 1000, family="gpt2") == 1000 * (fpt // 3)
    assert fpt != flops_per_token(s, vocab, SEQ, "llama") and total != total_params(s, vocab, "llama")


def test_decoder_flops_need_the_family():
    with pytest.raises(TypeError, match="family"):
        decoder_train_flops(get_size("200k"), 4096, SEQ, 1000)
    with pytest.raises(TypeError, match="family"):
        datastore_flops(get_size("200k"), 4096, SEQ, 1000)


class _Datastore:
    """A datastore of ROWS rows: its size is all the accounting reads."""

    def __init__(self, path):
        self.manifest = {"decoder_fingerprint": "gpt2"}

    def __len__(self) -> int:
        return ROWS


def test_the_pipeline_counts_a_gpt2_decoder_as_gpt2(small_store, tmp_path, monkeypatch):
    """One trial with the decoder really trained as GPT-2; the later stages are stubbed (their costs are
    counted from sizes alone), so what is checked is the accounting of the trained decoder."""
    from mlpmem_lightning.knn import datastore, targets
    from mlpmem_lightning.study import pipeline
    from mlpmem_lightning.study.sweep import SweepSpec

    def cli(args):
        if args[0] == "fit" and "MemoryLM" not in args:  # the decoder: the shipped 200k config, trained as GPT-2
            return run_cli([*args, "--model.family", "gpt2", "--trainer.limit_val_batches", "2"])
        return None

    def metrics(prefix: str) -> dict[str, float]:
        return {f"{prefix}/decoder_ppl": 100.0, f"{prefix}/loss": 4.0, f"{prefix}/lambda": 0.25}

    monkeypatch.setattr(pipeline, "prepare_tokens", lambda spec: small_store)
    monkeypatch.setattr(pipeline, "_cli", cli)
    monkeypatch.setattr(pipeline, "_evaluate", lambda *args, **kwargs: (metrics("val"), metrics("test")))
    monkeypatch.setattr(datastore, "build_datastore", lambda *args, **kwargs: None)
    monkeypatch.setattr(datastore, "Datastore", _Datastore)
    monkeypatch.setattr(targets, "build_targets", lambda *args, **kwargs: {"fingerprint": "t", "mass_kept_mean": 1.0})
    spec = SweepSpec(study="gpt2", decoder_sizes=["200k"], out=str(tmp_path / "study"), seq_len=SEQ,
                     batch_size=BATCH, decoder_tokens=STEPS * BATCH * SEQ, memory_tokens=STEPS * BATCH * SEQ)
    rows, attrs = pipeline.run_pipeline(spec, "200k", "mem-200k", seed=0)

    s, vocab = get_size("200k"), TokenStore(small_store).vocab_size
    run = tmp_path / "study" / "decoders" / "200k-seed0"
    net = load_decoder(run).net
    assert type(net).__name__ == "GPT2LMHeadModel"
    total, fpt = gpt2_by_hand(s.d_model, s.n_layer, vocab, SEQ)
    tokens = STEPS * BATCH * SEQ
    assert attrs["params_decoder"] == total == sum(p.numel() for p in net.parameters())
    assert attrs["flops_decoder_train"] == tokens * fpt
    assert attrs["flops_datastore"] == ROWS * (fpt // 3)
    memory = memory_flops_per_token(memory_config("mem-200k", s.d_model, vocab), train=True)
    assert attrs["flops_memory_train"] == tokens * (memory + fpt // 3)  # online: a decoder forward per token
    assert total != total_params(s, vocab, "llama") and fpt != flops_per_token(s, vocab, SEQ, "llama")
    decoder_rows = [r for r in rows if r["arch"] == "decoder"]
    assert decoder_rows and all(r["params_decoder"] == total and r["flops_train_total"] == tokens * fpt
                                for r in decoder_rows)
