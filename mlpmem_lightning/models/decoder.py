"""Decoder networks: transformers causal-LM classes built from a ladder size.

Model code only (no training logic): ``build_decoder`` turns a rung of the ladder
into a ``LlamaForCausalLM`` (RMSNorm, SwiGLU, RoPE; the default) or a
``GPT2LMHeadModel``, both with PyTorch SDPA attention, so checkpoints are ordinary
transformers models that any later stage (datastore, memory, generation) can load.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.ladder import DEFAULT_CONTEXT, DecoderSize, check_family, ffn_hidden


def decoder_config(size: DecoderSize, vocab_size: int, family: str = "llama", context: int = DEFAULT_CONTEXT,
                   tie_embeddings: bool = False, dropout: float = 0.0):
    """The transformers config of a ladder rung; only depth, width and heads vary."""
    check_family(family)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=context, n_embd=size.d_model, n_layer=size.n_layer,
            n_head=size.n_head, n_inner=ffn_hidden(size.d_model, family), resid_pdrop=dropout,
            embd_pdrop=dropout, attn_pdrop=dropout, tie_word_embeddings=tie_embeddings,
            bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is outside our vocabularies
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=size.d_model, intermediate_size=ffn_hidden(size.d_model, family),
        num_hidden_layers=size.n_layer, num_attention_heads=size.n_head, num_key_value_heads=size.n_head,
        max_position_embeddings=context, rms_norm_eps=1e-5, attention_dropout=dropout,
        tie_word_embeddings=tie_embeddings, attention_bias=False, mlp_bias=False,
    )


def build_decoder(size: DecoderSize, vocab_size: int, family: str = "llama", context: int = DEFAULT_CONTEXT,
                  tie_embeddings: bool = False, dropout: float = 0.0) -> PreTrainedModel:
    config = decoder_config(size, vocab_size, family, context, tie_embeddings, dropout)
    config._attn_implementation = "sdpa"
    cls = GPT2LMHeadModel if family == "gpt2" else LlamaForCausalLM
    return cls(config)


def context_length(model: PreTrainedModel) -> int:
    """Longest sequence the model's positions support."""
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions"))


def ffn_block(model: PreTrainedModel, layer: int = -1):
    """The feed-forward block of ``layer`` (negative counts from the end).

    Its *input* is the kNN-LM key of Khandelwal et al.: the hidden state after the
    block's pre-FFN norm (Llama ``post_attention_layernorm``, GPT-2 ``ln_2``).
    """
    if hasattr(model, "model") and hasattr(model.model, "layers"):  # llama, mistral, qwen2, ...
        layers = model.model.layers
    elif hasattr(model, "transformer") and hasattr(model.transformer, "h"):  # gpt2
        layers = model.transformer.h
    else:
        raise UserError(f"unsupported decoder family {model.config.model_type!r}: "
                        "use a Llama-style or GPT-2 causal LM")
    if not -len(layers) <= layer < len(layers):
        raise UserError(f"layer {layer} does not exist: the decoder has {len(layers)} layers")
    return layers[layer].mlp


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
