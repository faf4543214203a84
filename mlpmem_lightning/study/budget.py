"""The token budget rule of a decoder rung, and the epochs it makes (issue #15, docs/recipe.md).

Rule: a rung trains on ``multiplier x min(TOKENS_PER_PARAM x N_total, MAX_EPOCHS x D_train)`` tokens, with
N_total its total parameters (embeddings and head included: Hoffmann et al. 2022 count them, and at vocab 16384
they are most of a small rung's parameters, trained on every token) and D_train the train split's tokens. The
cap repeats the data at most ``MAX_EPOCHS`` times (Muennighoff et al. 2023: up to about 4 epochs cost little
against fresh data). A study runs each rung at several multipliers (``decoder_budgets``, e.g. [0.5, 1.0]) so
that decoder-only loss against FLOPs has a frontier. Other code reads the epochs of a run from
:func:`epochs` (results.csv's ``epochs``).
"""

from __future__ import annotations

import math

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.ladder import get_size, total_params

TOKENS_PER_PARAM = 20  # Chinchilla's compute-optimal ratio
MAX_EPOCHS = 4.0  # Muennighoff et al. 2023


def rule_tokens(size: str, vocab_size: int, train_tokens: int, family: str = "llama",
                tokens_per_param: float = TOKENS_PER_PARAM, max_epochs: float = MAX_EPOCHS) -> int:
    """Tokens of a rung at multiplier 1: ``min(tokens_per_param x N_total, max_epochs x train_tokens)``."""
    if train_tokens <= 0:
        raise UserError(f"the train split has {train_tokens} tokens: prepare a corpus with a train split")
    n_total = total_params(get_size(size), vocab_size, family)
    return int(min(tokens_per_param * n_total, max_epochs * train_tokens))


def budget_tokens(size: str, vocab_size: int, train_tokens: int, multiplier: float = 1.0, **rule) -> int:
    """Tokens of a rung at ``multiplier`` times the rule (the cap applies before the multiplier: 0.5 of a capped
    rung is half its epochs)."""
    if not multiplier > 0:
        raise UserError(f"decoder budget multiplier {multiplier!r} must be positive (e.g. decoder_budgets: [0.5, 1.0])")
    return int(round(multiplier * rule_tokens(size, vocab_size, train_tokens, **rule)))


def whole_steps(tokens: int, tokens_per_step: int) -> int:
    """Tokens actually trained on: whole optimizer steps (at least one)."""
    return max(1, math.ceil(tokens / tokens_per_step)) * tokens_per_step


def epochs(tokens: int, train_tokens: int) -> float:
    """Passes over the train split that ``tokens`` training tokens make (results.csv's ``epochs``)."""
    return tokens / train_tokens
