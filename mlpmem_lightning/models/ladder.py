"""The decoder size ladder, parameter counts and FLOPs per token.

Pythia-style: along the ladder only depth, width, heads and learning rate change;
everything else (family, vocabulary, context, FFN ratio) is shared, so the
differences between rungs are differences of scale. Counts are computed in closed
form (checked in the tests against hand counts and ``sum(p.numel())``) so that a
sweep can be planned without building a model.

FLOPs follow the PaLM / nanoGPT convention: a training step costs
``6 * N_matmul + 12 * n_layer * d_model * seq_len`` FLOPs per token, where
``N_matmul`` is every parameter that takes part in a matrix multiply (all
non-embedding weights plus the output head; the input embedding is a lookup) and
the second term is the attention score and value products, forward and backward,
counted over the full (unmasked) sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from mlpmem_lightning.core.errors import UserError

Family = Literal["llama", "gpt2"]
FAMILIES: tuple[str, ...] = ("llama", "gpt2")


@dataclass(frozen=True)
class DecoderSize:
    """One rung of the ladder: the only things that vary with scale."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    lr: float


# Each rung has about 2x the non-embedding parameters of the one before (llama family).
LADDER: tuple[DecoderSize, ...] = (
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
SIZES: dict[str, DecoderSize] = {s.name: s for s in LADDER}

# Shared, not scaled: the SwiGLU hidden size is 8/3 d rounded up to this multiple.
FFN_MULTIPLE = 64
DEFAULT_CONTEXT = 1024


def get_size(name: str) -> DecoderSize:
    if name not in SIZES:
        raise UserError(f"unknown decoder size {name!r}: choose one of {', '.join(SIZES)}")
    return SIZES[name]


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise UserError(f"unknown decoder family {family!r}: choose one of {', '.join(FAMILIES)}")


def ffn_hidden(d_model: int, family: str = "llama") -> int:
    """SwiGLU keeps the 4d MLP's parameter count with 2/3 of the width (LLaMA)."""
    if family == "gpt2":
        return 4 * d_model
    hidden = int(8 * d_model / 3)
    return FFN_MULTIPLE * -(-hidden // FFN_MULTIPLE)


def layer_params(d_model: int, family: str = "llama") -> int:
    """Parameters of one transformer block."""
    d, f = d_model, ffn_hidden(d_model, family)
    if family == "gpt2":  # biased projections, two LayerNorms with bias
        return (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
    return 4 * d * d + 3 * d * f + 2 * d  # no biases, two RMSNorm gains


def non_embedding_params(size: DecoderSize, family: str = "llama") -> int:
    """Blocks plus the final norm: what scaling laws call N (Kaplan et al.)."""
    final_norm = 2 * size.d_model if family == "gpt2" else size.d_model
    return size.n_layer * layer_params(size.d_model, family) + final_norm


def embedding_params(
    size: DecoderSize, vocab_size: int, family: str = "llama", tie: bool = False, context: int = DEFAULT_CONTEXT
) -> int:
    """Input embedding, untied output head and (GPT-2) learned positions."""
    n = vocab_size * size.d_model * (1 if tie else 2)
    if family == "gpt2":
        n += context * size.d_model
    return n


def total_params(
    size: DecoderSize, vocab_size: int, family: str = "llama", tie: bool = False, context: int = DEFAULT_CONTEXT
) -> int:
    return non_embedding_params(size, family) + embedding_params(size, vocab_size, family, tie, context)


def flops_per_token(size: DecoderSize, vocab_size: int, seq_len: int, family: str = "llama") -> int:
    """Training FLOPs per token (forward + backward), see the module docstring."""
    matmul_params = non_embedding_params(size, family) + vocab_size * size.d_model
    return 6 * matmul_params + 12 * size.n_layer * size.d_model * seq_len


def forward_flops_per_token(size: DecoderSize, vocab_size: int, seq_len: int, family: str = "llama") -> int:
    """Inference FLOPs per token: one third of a training step."""
    return flops_per_token(size, vocab_size, seq_len, family) // 3


def ladder_table(vocab_size: int = 8192, seq_len: int = 256, family: str = "llama", tie: bool = False) -> list[dict]:
    """The ladder as rows, for `mlpmem sizes` and the README."""
    rows = []
    for s in LADDER:
        rows.append(
            {
                **asdict(s),
                "head_dim": s.d_model // s.n_head,
                "ffn": ffn_hidden(s.d_model, family),
                "params_non_embedding": non_embedding_params(s, family),
                "params_total": total_params(s, vocab_size, family, tie),
                "flops_per_token": flops_per_token(s, vocab_size, seq_len, family),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# MLP Memory ladder (arXiv 2508.01832): one memory per decoder rung, matched in parameters.
#
# The paper matches a memory to a decoder at equal width with about 1.5x the decoder's depth
# (a residual FFN block has no attention, so it is cheaper than a transformer block). Here the
# depth is round(1.5 x decoder depth) and the FFN hidden size is then solved in closed form so
# that the memory's non-embedding parameters (blocks, norms, input projection; not the vocabulary
# head) are as close as possible to the decoder's, with the hidden size a multiple of 32. The
# default "swiglu" block is matched to the llama decoder family, "gelu" to gpt2. Counts here are
# torch-free; ``memory.py`` builds the modules and the tests check these against sum(p.numel()).
# ---------------------------------------------------------------------------------------------

MemoryBlock = Literal["swiglu", "gelu"]
MEMORY_BLOCKS: tuple[str, ...] = ("swiglu", "gelu")
MEMORY_FFN_MULTIPLE = 32
MEMORY_DEPTH_RATIO = 1.5
_BLOCK_FAMILY = {"swiglu": "llama", "gelu": "gpt2"}  # the decoder family a block type is matched to


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
    target = non_embedding_params(get_size(size.decoder), _BLOCK_FAMILY[block])
    b = memory_non_embedding_count(size.n_layer, size.d_model, 0, size.d_model, block)
    a = memory_non_embedding_count(size.n_layer, size.d_model, 1, size.d_model, block) - b
    m = MEMORY_FFN_MULTIPLE
    return max(m, m * round((target - b) / a / m))


MEMORY_LADDER: tuple[MemorySize, ...] = tuple(
    MemorySize(f"mem-{s.name}", s.name, _matched_depth(s.n_layer), s.d_model) for s in LADDER
)
MEMORY_SIZES: dict[str, MemorySize] = {s.name: s for s in MEMORY_LADDER}


def get_memory_size(name: str) -> MemorySize:
    if name not in MEMORY_SIZES:
        raise UserError(f"unknown memory size {name!r}: choose one of {', '.join(MEMORY_SIZES)}")
    return MEMORY_SIZES[name]


def matched_memory(decoder_size_name: str) -> MemorySize:
    """The memory rung matched in parameters to a decoder rung."""
    return MEMORY_SIZES[f"mem-{get_size(decoder_size_name).name}"]


def memory_ladder_table(vocab_size: int = 8192, block: str = "swiglu") -> list[dict]:
    """The memory ladder as rows (input width = the matched decoder's width, so no projection)."""
    rows = []
    for s in MEMORY_LADDER:
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
                "ratio_to_decoder": non_emb / non_embedding_params(get_size(s.decoder), _BLOCK_FAMILY[block]),
            }
        )
    return rows
