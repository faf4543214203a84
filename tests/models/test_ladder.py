"""The ladder's closed-form counts against hand counts and against the built models."""

import pytest
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.decoder import build_decoder
from mlpmem_lightning.models.ladder import (
    LADDER,
    embedding_params,
    flops_per_token,
    get_size,
    non_embedding_params,
    total_params,
)

V = 8192


def test_hand_count_smallest_llama():
    d, n_layer, ffn = 64, 4, 192  # 8/3*64 = 170.7, rounded up to a multiple of 64
    attention = 4 * d * d  # q, k, v, o without bias
    mlp = 3 * d * ffn  # gate, up, down
    norms = 2 * d  # two RMSNorm gains per block
    non_emb = n_layer * (attention + mlp + norms) + d  # + final norm
    s = get_size("200k")
    assert non_embedding_params(s) == non_emb
    assert total_params(s, V) == non_emb + 2 * V * d  # untied embedding and head
    # PaLM/nanoGPT: 6 * (matmul params incl. the head) + 12 * layers * width * context
    assert flops_per_token(s, V, 256) == 6 * (non_emb + V * d) + 12 * n_layer * d * 256


def test_hand_count_gpt2_block():
    s = get_size("800k")
    d = s.d_model
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    assert non_embedding_params(s, "gpt2") == s.n_layer * block + 2 * d


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("tie", [False, True])
def test_counts_match_built_models(family, tie):
    for s in LADDER:
        with torch.device("meta"):
            net = build_decoder(s, V, family, tie_embeddings=tie)
        n_total = sum(p.numel() for p in net.parameters())
        assert n_total == total_params(s, V, family, tie), s.name
        assert n_total - embedding_params(s, V, family, tie) == non_embedding_params(s, family), s.name


def test_ladder_spans_and_doubles():
    n = [non_embedding_params(s) for s in LADDER]
    assert len(LADDER) >= 8
    assert 0.15e6 <= n[0] <= 0.3e6 and 100e6 <= n[-1] <= 200e6
    ratios = [b / a for a, b in zip(n, n[1:])]
    assert all(1.4 <= r <= 2.2 for r in ratios), ratios
    # Pythia-style: only depth, width, heads, lr vary; heads divide the width
    assert all(s.d_model % s.n_head == 0 for s in LADDER)


def test_unknown_size_lists_valid_ones():
    with pytest.raises(UserError, match="200k, 400k"):
        get_size("tiny")
