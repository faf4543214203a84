"""The decoder-family registry: lookups, and a toy family added in one place that flows through
`mlpmem sizes`, the closed-form counts, `fit` and `datastore` with no other code knowing its name."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mlpmem_lightning.cli import main
from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.token_store import TokenStore
from mlpmem_lightning.data.windows import TokenWindows
from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore
from mlpmem_lightning.models.decoder import build_decoder
from mlpmem_lightning.models.families import (
    FAMILIES,
    DecoderFamily,
    DecoderSize,
    family_for_block,
    family_for_model_type,
    get_family,
    register_family,
    unregister_family,
)
from mlpmem_lightning.models.ladder import LADDER, get_size, total_params
from mlpmem_lightning.models.loading import load_decoder

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments"
V, SEQ, BATCH, STEPS = 4096, 64, 8, 4


# -- the toy family: everything it takes to add one ------------------------------------------------
class Toy(DecoderFamily):
    """GPT-NeoX (parallel attention and MLP, partial rotary, biased LayerNorm blocks) with a 2d FFN."""

    name = "toy"
    model_types = ("gpt_neox",)
    memory_block = "gelu"

    def config(self, size, vocab_size, context, tie_embeddings, dropout):
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=size.d_model, num_hidden_layers=size.n_layer,
                             num_attention_heads=size.n_head, intermediate_size=self.ffn_hidden(size.d_model),
                             max_position_embeddings=context, tie_word_embeddings=tie_embeddings,
                             attention_dropout=dropout, hidden_dropout=dropout, bos_token_id=None, eos_token_id=None)

    def model_class(self):
        from transformers import GPTNeoXForCausalLM

        return GPTNeoXForCausalLM

    def layers(self, model):
        return model.gpt_neox.layers  # the FFN (.mlp) reads post_attention_layernorm's output

    def ffn_hidden(self, d_model):
        return 2 * d_model

    def layer_params(self, d_model):
        d, f = d_model, self.ffn_hidden(d_model)
        return (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d

    def final_norm_params(self, d_model):
        return 2 * d_model


@pytest.fixture(scope="module")
def toy():
    family = register_family(Toy())
    yield family
    unregister_family(family.name)


# -- the registry ---------------------------------------------------------------------------------
def test_builtin_families_and_lookups():
    assert list(FAMILIES)[:2] == ["llama", "gpt2"]  # the built-in ones, in registry order
    assert get_family("gpt2") is FAMILIES["gpt2"] and get_family(FAMILIES["llama"]) is FAMILIES["llama"]
    assert [family_for_model_type(t).name for t in ("llama", "mistral", "qwen2", "gpt2")] == ["llama"] * 3 + ["gpt2"]
    assert family_for_block("swiglu").name == "llama" and family_for_block("gelu").name == "gpt2"


def test_unknown_family_is_one_line_listing_the_choices():
    with pytest.raises(UserError, match=r"^unknown decoder family 'bert': choose one of llama, gpt2"):
        get_family("bert")
    with pytest.raises(UserError, match="register a family in mlpmem_lightning/models/families/"):
        family_for_model_type("bert")


def test_a_family_cannot_take_a_registered_name_or_model_type():
    with pytest.raises(ValueError, match="already registered"):
        register_family(type("Again", (Toy,), {"name": "llama", "model_types": ("x",)})())
    with pytest.raises(ValueError, match="mistral"):
        register_family(type("Clash", (Toy,), {"name": "clash", "model_types": ("mistral",)})())
    assert "clash" not in FAMILIES and family_for_model_type("mistral").name == "llama"


# -- the toy family end to end ---------------------------------------------------------------------
def hand_flops(net: torch.nn.Module, size: DecoderSize, vocab: int, seq_len: int, tie: bool) -> int:
    """6 x (every parameter but the input embedding, the head counted once even when tied) + attention."""
    matmul = sum(p.numel() for p in net.parameters()) - vocab * size.d_model + (vocab * size.d_model if tie else 0)
    return 6 * matmul + 12 * size.n_layer * size.d_model * seq_len


@pytest.mark.parametrize("tie", [False, True])
def test_toy_counts_match_the_built_model_and_a_hand_count(toy, tie):
    for s in LADDER[:6]:
        with torch.device("meta"):
            net = build_decoder(s, V, "toy", tie_embeddings=tie)
        assert type(net).__name__ == "GPTNeoXForCausalLM"
        assert sum(p.numel() for p in net.parameters()) == total_params(s, V, "toy", tie), s.name
        assert toy.flops_per_token(s, V, 256) == hand_flops(net, s, V, 256, tie), s.name
    s = get_size("200k")  # d 64, 4 layers, FFN 128: qkv, dense, two MLP matrices with biases, two LayerNorms
    block = (64 * 192 + 192) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 4 * 64
    assert toy.non_embedding_params(s) == 4 * block + 2 * 64
    assert toy.flops_per_token(s, V, 256) == 6 * (4 * block + 2 * 64 + V * 64) + 12 * 4 * 64 * 256


def test_sizes_lists_the_toy_family(toy, capsys):
    main(["sizes", "--family", "toy", "--vocab-size", str(V), "--seq-len", "128", "--ladder", "decoder",
          "--format", "csv"])
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(df["ffn"]) == [2 * s.d_model for s in LADDER]
    assert list(df["params_total"]) == [total_params(s, V, "toy") for s in LADDER]
    assert list(df["flops_per_token"]) == [toy.flops_per_token(s, V, 128) for s in LADDER]
    main(["sizes", "--family", "toy"])
    out = capsys.readouterr().out
    assert out.startswith("decoder ladder (toy, vocab 8192") and "memory ladder (gelu" in out


@pytest.fixture(scope="module")
def toy_run(toy, small_store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("toy") / "decoder"
    cli = run_cli(["fit", "--config", str(EXP / "trainer/cpu.yaml"), "--config", str(EXP / "model/decoder_200k.yaml"),
                   "--model.family", "toy", "--data.token_store", str(small_store), "--data.seq_len", str(SEQ),
                   "--data.batch_size", str(BATCH), "--model.max_tokens", str(STEPS * BATCH * SEQ),
                   "--trainer.limit_val_batches", "2", "--trainer.default_root_dir", str(run),
                   "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step == STEPS
    assert type(cli.model.net).__name__ == "GPTNeoXForCausalLM"
    assert cli.model.flops_per_token == toy.flops_per_token(get_size("200k"), V, SEQ)
    return run


def test_toy_fits_and_its_datastore_keys_are_the_ffn_inputs(toy, toy_run, small_store, tmp_path):
    dec = load_decoder(toy_run)
    assert dec.family == "toy" and dec.seq_len == SEQ
    out = tmp_path / "ds"
    m = build_datastore(toy_run, small_store, out, DatastoreSettings(split="valid", batch_size=16), device="cpu")
    keys = torch.from_numpy(np.load(out / "keys.npy"))

    store = TokenStore(small_store)
    windows = TokenWindows(small_store / "valid.npy", SEQ, store.manifest["tokens"]["valid"])
    batch = windows.__getitems__(list(range(len(windows))))
    captured = []  # hooked by hand on GPT-NeoX's last MLP, not through the family
    handle = dec.net.gpt_neox.layers[-1].mlp.register_forward_pre_hook(lambda mod, args: captured.append(args[0]))
    with torch.no_grad():
        for x in batch["input_ids"].split(16):
            dec.net(input_ids=x, use_cache=False)
    handle.remove()
    expected = torch.cat(captured).flatten(0, 1)
    assert m["N"] == len(windows) * SEQ and m["d"] == 64 and keys.shape == expected.shape
    torch.testing.assert_close(keys.float(), expected.half().float(), rtol=1e-3, atol=1e-3)
    values = np.load(out / "values.npy")
    assert np.array_equal(values, batch["labels"].flatten().numpy())


def test_a_checkpoint_of_an_unregistered_family_says_how_to_load_it(toy, toy_run, monkeypatch):
    monkeypatch.delitem(FAMILIES, "toy")
    with pytest.raises(UserError, match=r"family 'toy', which is not registered: register it in"):
        load_decoder(toy_run)
