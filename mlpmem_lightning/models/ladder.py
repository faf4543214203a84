"""The decoder size ladder, and its parameter counts and FLOPs per token by family.

Pythia-style: along the ladder only depth, width, heads and learning rate change;
everything else (family, vocabulary, context, FFN ratio) is shared, so the
differences between rungs are differences of scale. Counts are closed-form (checked
in the tests against hand counts and ``sum(p.numel())``) so that a sweep can be
planned without building a model; each comes from the decoder family's registry
entry (``models/families/``), including the FLOPs convention
``6 * N_matmul + 12 * n_layer * d_model * seq_len`` per training token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.families import (
    DEFAULT_CONTEXT,
    FAMILIES,
    DecoderFamily,
    DecoderSize,
    family_for_block,
    get_family,
)

__all__ = ["DEFAULT_CONTEXT", "FAMILIES", "DecoderSize"]  # re-exported: the ladder's vocabulary

# The study ladder (issue #15): head size fixed at HEAD_DIM, depth and width never decrease from one rung to the
# next, ~2x non-embedding parameters per rung (one 4x step: 4x64 -> 4x128, since a wider rung may not be
# shallower), 0.11M -> 21M non-embedding (200x). Rungs are named "n" + their non-embedding parameters (llama), so
# that no name collides with a legacy rung. The learning rates are fallbacks only: a study takes each rung's
# from `mlpmem lr-search` (study/lr_search.py).
HEAD_DIM = 64


def _rung(name: str, n_layer: int, d_model: int, lr: float) -> DecoderSize:
    return DecoderSize(name, n_layer, d_model, d_model // HEAD_DIM, lr)


LADDER: tuple[DecoderSize, ...] = (
    _rung("n0.1m", 2, 64, 3e-3),
    _rung("n0.2m", 4, 64, 3e-3),
    _rung("n0.85m", 4, 128, 2e-3),
    _rung("n1.3m", 6, 128, 2e-3),
    _rung("n2.7m", 6, 192, 1.5e-3),
    _rung("n6.4m", 8, 256, 1e-3),
    _rung("n13m", 10, 320, 1e-3),
    _rung("n21m", 12, 384, 8e-4),
)

# The ladder before issue #15: its shapes jump (depth alternates 4 and 8, head size 32 -> 64 at 6m). Kept so
# that old checkpoints, memories and experiments/model/*.yaml still load (`get_size` resolves them), but no
# longer listed by `mlpmem sizes` nor used by the shipped studies.
LEGACY_LADDER: tuple[DecoderSize, ...] = (
    DecoderSize("200k", 4, 64, 2, 3e-3),
    DecoderSize("400k", 8, 64, 2, 3e-3),
    DecoderSize("800k", 4, 128, 4, 2e-3),
    DecoderSize("1.6m", 8, 128, 4, 2e-3),
    DecoderSize("3m", 8, 192, 6, 1.5e-3),
    DecoderSize("6m", 8, 256, 4, 1e-3),
    DecoderSize("12m", 10, 320, 5, 1e-3),
    DecoderSize("25m", 8, 512, 8, 8e-4),
    DecoderSize("50m", 10, 640, 10, 6e-4),
    DecoderSize("100m", 12, 832, 13, 6e-4),
    DecoderSize("150m", 12, 1024, 16, 4e-4),
)
ALL_RUNGS: tuple[DecoderSize, ...] = LADDER + LEGACY_LADDER
SIZES: dict[str, DecoderSize] = {s.name: s for s in ALL_RUNGS}


def get_size(name: str) -> DecoderSize:
    if name not in SIZES:
        raise UserError(f"unknown decoder size {name!r}: choose one of {', '.join(s.name for s in LADDER)} "
                        f"(or a legacy rung: {', '.join(s.name for s in LEGACY_LADDER)})")
    return SIZES[name]


# The counts by family name, read off the registry. Their default is DecoderLM's default family; the
# accounting of a trained decoder (models/flops.py) takes the family without a default instead.
FamilyArg = str | DecoderFamily  # a registry name or a family object


def ffn_hidden(d_model: int, family: FamilyArg = "llama") -> int:
    return get_family(family).ffn_hidden(d_model)


def layer_params(d_model: int, family: FamilyArg = "llama") -> int:
    """Parameters of one transformer block."""
    return get_family(family).layer_params(d_model)


def non_embedding_params(size: DecoderSize, family: FamilyArg = "llama") -> int:
    """Blocks plus the final norm: what scaling laws call N (Kaplan et al.)."""
    return get_family(family).non_embedding_params(size)


def embedding_params(size: DecoderSize, vocab_size: int, family: FamilyArg = "llama", tie: bool = False,
                     context: int = DEFAULT_CONTEXT) -> int:
    """Input embedding, untied output head and learned positions (GPT-2)."""
    return get_family(family).embedding_params(size, vocab_size, tie, context)


def total_params(size: DecoderSize, vocab_size: int, family: FamilyArg = "llama", tie: bool = False,
                 context: int = DEFAULT_CONTEXT) -> int:
    return get_family(family).total_params(size, vocab_size, tie, context)


def flops_per_token(size: DecoderSize, vocab_size: int, seq_len: int, family: FamilyArg = "llama") -> int:
    """Training FLOPs per token (forward + backward), see ``families/base.py``."""
    return get_family(family).flops_per_token(size, vocab_size, seq_len)


def forward_flops_per_token(size: DecoderSize, vocab_size: int, seq_len: int, family: FamilyArg = "llama") -> int:
    """Inference FLOPs per token: one third of a training step."""
    return get_family(family).forward_flops_per_token(size, vocab_size, seq_len)


def ladder_table(vocab_size: int = 8192, seq_len: int = 256, family: FamilyArg = "llama",
                 tie: bool = False, rungs: tuple[DecoderSize, ...] = LADDER) -> list[dict]:
    """The ladder as rows, for `mlpmem sizes` and the README (``rungs=LEGACY_LADDER``: the old one)."""
    fam = get_family(family)
    return [{**asdict(s), "head_dim": s.d_model // s.n_head, "ffn": fam.ffn_hidden(s.d_model),
             "params_non_embedding": fam.non_embedding_params(s), "params_total": fam.total_params(s, vocab_size, tie),
             "flops_per_token": fam.flops_per_token(s, vocab_size, seq_len)}
            for s in rungs]


# ---------------------------------------------------------------------------------------------
# MLP Memory ladder (arXiv 2508.01832): one memory per decoder rung, matched in parameters.
#
# The paper matches a memory to a decoder at equal width with about 1.5x the decoder's depth
# (a residual FFN block has no attention, so it is cheaper than a transformer block). Here the
# depth is round(1.5 x decoder depth) and the FFN hidden size is then solved in closed form so
# that the memory's non-embedding parameters (blocks, norms, input projection; not the vocabulary
# head) are as close as possible to the decoder's, with the hidden size a multiple of 32. The
# block is matched to the first registered decoder family that uses it (``memory_block``: "swiglu"
# to llama, "gelu" to gpt2). Counts here are torch-free; ``memory.py`` builds the modules and the
# tests check these against sum(p.numel()).
# ---------------------------------------------------------------------------------------------

MemoryBlock = Literal["swiglu", "gelu"]
MEMORY_BLOCKS: tuple[str, ...] = ("swiglu", "gelu")
MEMORY_FFN_MULTIPLE = 32
MEMORY_DEPTH_RATIO = 1.5


@dataclass(frozen=True)
class MemorySize:
    """One memory rung: named after, and matched to, a decoder rung (``mem-200k`` <-> ``200k``)."""

    name: str
    decoder: str
    n_layer: int
    d_model: int


def check_block(block: str) -> None:
    if block not in MEMORY_BLOCKS:
        raise UserError(f"unknown memory block {block!r}: choose one of {', '.join(MEMORY_BLOCKS)}")


def memory_layer_params(d_model: int, ffn: int, block: str = "swiglu") -> int:
    """One residual block x + FFN(Norm(x))."""
    d, f = d_model, ffn
    if block == "gelu":  # LayerNorm (gain, bias), fc and proj with biases
        return 2 * d + (d * f + f) + (f * d + d)
    return d + 3 * d * f  # RMSNorm gain, gate/up/down without biases


def memory_non_embedding_count(n_layer: int, d_model: int, ffn: int, input_dim: int, block: str = "swiglu") -> int:
    """Everything but the vocabulary head: input projection (iff widths differ), blocks, final norm."""
    check_block(block)
    projection = input_dim * d_model if input_dim != d_model else 0
    final_norm = 2 * d_model if block == "gelu" else d_model
    return projection + n_layer * memory_layer_params(d_model, ffn, block) + final_norm


def memory_flops_count(non_embedding: int, d_model: int, vocab_size: int, train: bool = True,
                       head_trainable: bool = True) -> int:
    """FLOPs per token, decoder convention (6N train, 2N forward; N includes the head).

    No attention term: a memory sees one hidden state at a time, so its cost does not depend
    on the context length. A frozen head (tied to the decoder's) needs no weight gradient:
    4 FLOPs per head parameter in training instead of 6.
    """
    head = vocab_size * d_model
    if not train:
        return 2 * (non_embedding + head)
    return 6 * non_embedding + (6 if head_trainable else 4) * head


def _matched_depth(decoder_layers: int) -> int:
    return int(MEMORY_DEPTH_RATIO * decoder_layers + 0.5)  # round half up


def memory_ffn(size: MemorySize, block: str = "swiglu") -> int:
    """Hidden size (a multiple of 32) that brings the memory's non-embedding params closest to its decoder's.

    Non-embedding params are affine in the hidden size f, N(f) = a*f + b, so f* = (target - b) / a
    and the best multiple of 32 is f* rounded to the nearest one (at least 32).
    """
    check_block(block)
    target = family_for_block(block).non_embedding_params(get_size(size.decoder))
    b = memory_non_embedding_count(size.n_layer, size.d_model, 0, size.d_model, block)
    a = memory_non_embedding_count(size.n_layer, size.d_model, 1, size.d_model, block) - b
    m = MEMORY_FFN_MULTIPLE
    return max(m, m * round((target - b) / a / m))


MEMORY_LADDER: tuple[MemorySize, ...] = tuple(  # one per decoder rung, legacy ones included (old memories load)
    MemorySize(f"mem-{s.name}", s.name, _matched_depth(s.n_layer), s.d_model) for s in ALL_RUNGS
)
MEMORY_SIZES: dict[str, MemorySize] = {s.name: s for s in MEMORY_LADDER}


def get_memory_size(name: str) -> MemorySize:
    if name not in MEMORY_SIZES:
        raise UserError(f"unknown memory size {name!r}: choose one of {', '.join(MEMORY_SIZES)}")
    return MEMORY_SIZES[name]


def matched_memory(decoder_size_name: str) -> MemorySize:
    """The memory rung matched in parameters to a decoder rung."""
    return MEMORY_SIZES[f"mem-{get_size(decoder_size_name).name}"]


def memory_ladder_table(vocab_size: int = 8192, block: str = "swiglu", legacy: bool = False) -> list[dict]:
    """The memory ladder as rows (input width = the matched decoder's width, so no projection): the study
    ladder's memories, or with ``legacy`` the legacy rungs' ones."""
    check_block(block)
    family = family_for_block(block)
    names = {s.name for s in (LEGACY_LADDER if legacy else LADDER)}
    rows = []
    for s in (m for m in MEMORY_LADDER if m.decoder in names):
        f = memory_ffn(s, block)
        non_emb = memory_non_embedding_count(s.n_layer, s.d_model, f, s.d_model, block)
        rows.append(
            {
                **asdict(s),
                "block": block,
                "ffn": f,
                "params_non_embedding": non_emb,
                "params_total": non_emb + vocab_size * s.d_model,
                "flops_per_token": memory_flops_count(non_emb, s.d_model, vocab_size),
                "ratio_to_decoder": non_emb / family.non_embedding_params(get_size(s.decoder)),
            }
        )
    return rows
