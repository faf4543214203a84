"""The ladder's closed-form counts against hand counts and against the built models."""

import pytest
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.decoder import build_decoder
from mlpmem_lightning.models.ladder import (
    HEAD_DIM,
    LADDER,
    LEGACY_LADDER,
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
    for s in LADDER + LEGACY_LADDER[:3]:
        with torch.device("meta"):
            net = build_decoder(s, V, family, tie_embeddings=tie)
        n_total = sum(p.numel() for p in net.parameters())
        assert n_total == total_params(s, V, family, tie), s.name
        assert n_total - embedding_params(s, V, family, tie) == non_embedding_params(s, family), s.name


def test_legacy_ladder_still_resolves():
    n = [non_embedding_params(s) for s in LEGACY_LADDER]
    assert 0.15e6 <= n[0] <= 0.3e6 and 100e6 <= n[-1] <= 200e6
    assert all(get_size(s.name) == s for s in LEGACY_LADDER)
    assert not {s.name for s in LADDER} & {s.name for s in LEGACY_LADDER}


def _llama_non_embedding(n_layer: int, d: int) -> int:
    """Independent hand count: 8/3 d rounded up to 64 for SwiGLU, 4 attention and 3 MLP matrices, 2 norms."""
    ffn = -(-int(8 * d / 3) // 64) * 64
    return n_layer * (4 * d * d + 3 * d * ffn + 2 * d) + d


def test_study_ladder_is_monotone_with_a_fixed_head_and_spans_60x():
    shapes = [(s.n_layer, s.d_model) for s in LADDER]
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(shapes, shapes[1:])), shapes
    assert all(s.d_model == HEAD_DIM * s.n_head for s in LADDER)
    n = [_llama_non_embedding(L, d) for L, d in shapes]
    assert n == [non_embedding_params(s) for s in LADDER]
    assert all(b > a for a, b in zip(n, n[1:]))
    assert n[-1] / n[0] >= 60 and len(LADDER) >= 6
    assert 0.05e6 <= n[0] <= 0.2e6 and n[-1] <= 25e6  # quick on one H200 at vocab 16384


def test_unknown_size_lists_valid_ones():
    with pytest.raises(UserError, match="200k, 400k"):
        get_size("tiny")
