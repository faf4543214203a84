"""MLP Memory: closed-form counts against built modules and hand counts, the matched ladder, export round trip."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.ladder import (
    ALL_RUNGS,
    MEMORY_LADDER,
    get_memory_size,
    get_size,
    matched_memory,
    memory_ffn,
    memory_ladder_table,
    non_embedding_params,
)
from mlpmem_lightning.models.memory import (
    MemoryConfig,
    MLPMemory,
    build_memory,
    load_memory,
    memory_config,
    memory_flops_per_token,
    memory_non_embedding_params,
    memory_params,
    save_memory,
)

V = 8192
FAMILY = {"swiglu": "llama", "gelu": "gpt2"}


def hand_non_embedding(n_layer: int, d: int, f: int, input_dim: int, block: str) -> int:
    """Counted by hand: projection, per block norm + FFN matrices (+ biases for gelu), final norm."""
    proj = input_dim * d if input_dim != d else 0
    if block == "swiglu":
        return proj + n_layer * (d + 3 * d * f) + d  # RMSNorm gain; gate, up, down
    return proj + n_layer * (2 * d + d * f + f + f * d + d) + 2 * d  # LayerNorm gain+bias; fc, proj with bias


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("block", ["swiglu", "gelu"])
@pytest.mark.parametrize("input_dim", [48, 96])  # 48 = d_model (no projection), 96 needs one
@pytest.mark.parametrize("tie_head", [False, True])
def test_counts_match_module_and_hand_count(block, input_dim, tie_head):
    cfg = MemoryConfig(input_dim=input_dim, d_model=48, n_layer=3, ffn=80, vocab_size=100, block=block,
                       tie_head=tie_head)
    net = MLPMemory(cfg)
    assert (net.proj is None) == (input_dim == 48)
    head = 100 * 48
    assert memory_params(cfg) == n_params(net)
    assert memory_non_embedding_params(cfg) == hand_non_embedding(3, 48, 80, input_dim, block)
    assert memory_params(cfg) == memory_non_embedding_params(cfg) + (0 if tie_head else head)
    # FLOPs: 2 per weight forward, 6 in training; a frozen head skips its weight gradient (4)
    all_weights = memory_non_embedding_params(cfg) + head
    assert memory_flops_per_token(cfg, train=False) == 2 * all_weights
    assert memory_flops_per_token(cfg, train=True) == 6 * all_weights - (2 * head if tie_head else 0)


def test_tied_head_is_a_saved_buffer_not_a_parameter():
    net = MLPMemory(MemoryConfig(input_dim=16, d_model=16, n_layer=1, ffn=32, vocab_size=50, tie_head=True))
    assert "head_weight" in net.state_dict()
    assert all(p.data_ptr() != net.head_w.data_ptr() for p in net.parameters())


@pytest.mark.parametrize("block", ["swiglu", "gelu"])
def test_ladder_matches_decoders(block):
    assert [m.decoder for m in MEMORY_LADDER] == [s.name for s in ALL_RUNGS]
    rows = {r["name"]: r for r in memory_ladder_table(V, block) + memory_ladder_table(V, block, legacy=True)}
    for mem in MEMORY_LADDER:
        dec = get_size(mem.decoder)
        assert mem.name == f"mem-{dec.name}" and matched_memory(dec.name) == mem
        assert mem.d_model == dec.d_model
        assert mem.n_layer == int(np.floor(1.5 * dec.n_layer + 0.5))
        target = non_embedding_params(dec, FAMILY[block])
        f = memory_ffn(mem, block)
        # brute force over every multiple of 32: the chosen hidden size is the closest match
        candidates = range(32, 16 * mem.d_model, 32)
        best = min(candidates, key=lambda c: abs(hand_non_embedding(mem.n_layer, mem.d_model, c, mem.d_model, block)
                                                 - target))
        mine = hand_non_embedding(mem.n_layer, mem.d_model, f, mem.d_model, block)
        assert f % 32 == 0
        assert abs(mine - target) == abs(hand_non_embedding(mem.n_layer, mem.d_model, best, mem.d_model, block)
                                         - target)
        assert 0.9 <= mine / target <= 1.1, mem.name
        row = rows[mem.name]
        assert (row["ffn"], row["params_non_embedding"]) == (f, mine)
        assert row["ratio_to_decoder"] == pytest.approx(mine / target)
        assert row["params_total"] == mine + V * mem.d_model


@pytest.mark.parametrize("block", ["swiglu", "gelu"])
def test_built_ladder_counts(block):
    for mem in MEMORY_LADDER:
        with torch.device("meta"):
            net = build_memory(mem.name, input_dim=mem.d_model, vocab_size=V, block=block)
        cfg = net.cfg
        assert (cfg.n_layer, cfg.d_model, cfg.ffn, cfg.block) == (mem.n_layer, mem.d_model, memory_ffn(mem, block),
                                                                  block)
        assert n_params(net) == memory_params(cfg), mem.name
        assert n_params(net) - V * mem.d_model == memory_non_embedding_params(cfg)


@pytest.mark.parametrize("block", ["swiglu", "gelu"])
def test_forward_shapes_and_init(block):
    net = build_memory("mem-800k", input_dim=96, vocab_size=300, block=block)
    assert net(torch.randn(2, 5, 96)).shape == (2, 5, 300)
    assert net(torch.randn(7, 96)).shape == (7, 300)
    # GPT-2 init: residual writers scaled by 1/sqrt(2L), everything else N(0, 0.02)
    expect = 0.02 / np.sqrt(2 * net.cfg.n_layer)
    assert net.blocks[0].mlp.down.weight.std().item() == pytest.approx(expect, rel=0.05)
    assert net.blocks[0].mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("tie_head", [False, True])
def test_init_head_from_decoder(tie_head):
    from mlpmem_lightning.models.decoder import build_decoder

    dec = build_decoder(get_size("200k"), vocab_size=300)
    head = dec.get_output_embeddings().weight
    net = build_memory("mem-200k", input_dim=64, vocab_size=300, tie_head=tie_head)
    net.init_head_from(head)
    assert torch.equal(net.head_w, head)
    assert net.head_w.data_ptr() != head.data_ptr()  # a copy: training the memory leaves the decoder alone
    h = torch.randn(4, 64)
    torch.testing.assert_close(net(h), net.features(h) @ head.detach().T)
    with pytest.raises(UserError, match="does not fit"):
        net.init_head_from(torch.zeros(301, 64))
    with pytest.raises(UserError, match="does not fit"):
        build_memory("mem-200k", input_dim=64, vocab_size=300).init_head_from(torch.zeros(300, 128))


@pytest.mark.parametrize("cfg", [
    MemoryConfig(input_dim=24, d_model=32, n_layer=2, ffn=64, vocab_size=40),
    MemoryConfig(input_dim=32, d_model=32, n_layer=2, ffn=64, vocab_size=40, block="gelu", norm_eps=1e-6),
    MemoryConfig(input_dim=32, d_model=32, n_layer=1, ffn=32, vocab_size=40, tie_head=True),
])
def test_save_load_round_trip(cfg, tmp_path):
    torch.manual_seed(0)
    net = MLPMemory(cfg)
    for p in net.parameters():  # move every norm and bias off its initial value
        p.data.add_(torch.randn_like(p) * 0.1)
    save_memory(net, cfg, tmp_path / "mem", {"decoder_fingerprint": "abc", "alpha": 0.5})
    assert sorted(p.name for p in (tmp_path / "mem").iterdir()) == ["config.json", "model.safetensors"]
    loaded, extra = load_memory(tmp_path / "mem")
    assert loaded.cfg == cfg and extra == {"decoder_fingerprint": "abc", "alpha": 0.5}
    h = torch.randn(5, cfg.input_dim)
    assert torch.equal(loaded(h), net.eval()(h))


def test_load_without_lightning(tmp_path):
    """A fresh interpreter loads an export with torch + safetensors alone (no Lightning import)."""
    cfg = MemoryConfig(input_dim=16, d_model=24, n_layer=2, ffn=32, vocab_size=30)
    net = MLPMemory(cfg).eval()
    save_memory(net, cfg, tmp_path / "mem", {})
    h = torch.randn(3, 16)
    np.save(tmp_path / "h.npy", h.numpy())
    code = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from mlpmem_lightning.models.memory import load_memory
        model, _ = load_memory({str(tmp_path / 'mem')!r})
        with torch.no_grad():
            out = model(torch.from_numpy(np.load({str(tmp_path / 'h.npy')!r})))
        np.save({str(tmp_path / 'out.npy')!r}, out.numpy())
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
    with torch.no_grad():
        assert np.array_equal(np.load(tmp_path / "out.npy"), net(h).numpy())


def test_bad_exports_and_names_are_user_errors(tmp_path):
    cfg = MemoryConfig(input_dim=16, d_model=16, n_layer=1, ffn=32, vocab_size=30)
    with pytest.raises(UserError, match="does not exist"):
        load_memory(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="incomplete"):
        load_memory(tmp_path / "empty")

    out = save_memory(MLPMemory(cfg), cfg, tmp_path / "mem", {})
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not a memory config"):
        load_memory(out)
    (out / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"], "n_layer": 2}}))
    with pytest.raises(UserError, match="does not match"):
        load_memory(out)
    (out / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"], "block": "relu"}}))
    with pytest.raises(UserError, match="not a memory config|unknown memory block"):
        load_memory(out)
    (out / "config.json").write_text(json.dumps(meta))
    (out / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(UserError, match="unreadable"):
        load_memory(out)

    with pytest.raises(UserError, match="mem-200k"):
        get_memory_size("mem-7b")
    with pytest.raises(UserError, match="unknown decoder size"):
        matched_memory("7b")
    with pytest.raises(UserError, match="unknown memory block"):
        memory_config("mem-200k", 64, 100, block="relu")
    with pytest.raises(UserError, match="positive integer"):
        MemoryConfig(input_dim=16, d_model=0, n_layer=1, ffn=32, vocab_size=30)


def test_dropout_acts_in_train_mode_only():
    """Eval mode (and p = 0) is the network without dropout, recomputed by hand in float64; train mode with p > 0
    drops units (outputs differ between two calls) and is not the eval output."""
    h = torch.randn(6, 32, dtype=torch.float64)
    torch.manual_seed(0)
    net = build_memory("mem-200k", input_dim=32, vocab_size=50, dropout=0.1).double()
    assert net.cfg.dropout == 0.1
    x = net.proj(h) if net.proj is not None else h
    for block in net.blocks:  # x + FFN(Norm(x)) with no dropout at all
        x = x + block.mlp(block.norm(x))
    reference = net.norm(x) @ net.head_w.T
    net.eval()
    torch.testing.assert_close(net(h), reference)
    net.train()
    a, b = net(h), net(h)
    assert not torch.allclose(a, b) and not torch.allclose(a, reference)
    off = build_memory("mem-200k", input_dim=32, vocab_size=50, dropout=0.0).double().train()
    off.load_state_dict(net.state_dict())  # dropout has no weights: the same state dict
    torch.testing.assert_close(off(h), reference)
    with pytest.raises(UserError, match="dropout"):
        build_memory("mem-200k", input_dim=32, vocab_size=50, dropout=1.0)
