"""Decoder networks: transformers causal-LM classes built from a ladder size.

Model code only (no training logic): ``build_decoder`` turns a rung of the ladder into the
transformers model of a registered family (``models/families/``: ``LlamaForCausalLM`` by default,
``GPT2LMHeadModel``, ...), with PyTorch SDPA attention, so checkpoints are ordinary transformers
models that any later stage (datastore, memory, generation) can load. The kNN key hooks find the
FFN through the model's family, so they work for every registered family.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from mlpmem_lightning.models.families import DecoderFamily, family_of, get_family
from mlpmem_lightning.models.ladder import DEFAULT_CONTEXT, DecoderSize


def decoder_config(size: DecoderSize, vocab_size: int, family: str | DecoderFamily = "llama",
                   context: int = DEFAULT_CONTEXT, tie_embeddings: bool = False,
                   dropout: float = 0.0) -> PretrainedConfig:
    """The transformers config of a ladder rung; only depth, width and heads vary."""
    return get_family(family).config(size, vocab_size, context, tie_embeddings, dropout)


def build_decoder(size: DecoderSize, vocab_size: int, family: str | DecoderFamily = "llama",
                  context: int = DEFAULT_CONTEXT, tie_embeddings: bool = False,
                  dropout: float = 0.0) -> PreTrainedModel:
    return get_family(family).build(size, vocab_size, context, tie_embeddings, dropout)


def context_length(model: PreTrainedModel) -> int:
    """Longest sequence the model's positions support."""
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions"))


def ffn_block(model: PreTrainedModel, layer: int = -1) -> torch.nn.Module:
    """The feed-forward block of ``layer`` (negative counts from the end), found through the model's family.

    Its *input* is the kNN-LM key of Khandelwal et al.: the hidden state after the
    block's pre-FFN norm (Llama ``post_attention_layernorm``, GPT-2 ``ln_2``).
    """
    return family_of(model).ffn_block(model, layer)


class _Stop(Exception):
    """Raised by the key hook to skip the layers and head after the key point."""


@torch.no_grad()
def ffn_inputs(model: PreTrainedModel, input_ids: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Keys only: run the decoder up to ``layer``'s FFN input and stop there (no head, no later layers)."""
    captured: list[torch.Tensor] = []

    def hook(module, args):
        captured.append(args[0])
        raise _Stop

    handle = ffn_block(model, layer).register_forward_pre_hook(hook)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def logits_and_ffn_inputs(model: PreTrainedModel, input_ids: torch.Tensor,
                          layer: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving both the logits and the keys (kNN-LM and memory evaluation)."""
    captured: list[torch.Tensor] = []
    handle = ffn_block(model, layer).register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        logits = model(input_ids=input_ids, use_cache=False).logits
    finally:
        handle.remove()
    return logits, captured[0]
