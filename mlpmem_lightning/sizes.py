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

from .errors import UserError

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
