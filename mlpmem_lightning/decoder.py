"""Decoder networks: transformers causal-LM classes built from a ladder size.

Model code only (no training logic): ``build_decoder`` turns a rung of the ladder
into a ``LlamaForCausalLM`` (RMSNorm, SwiGLU, RoPE; the default) or a
``GPT2LMHeadModel``, both with PyTorch SDPA attention, so checkpoints are ordinary
transformers models that any later stage (datastore, memory, generation) can load.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from .sizes import DEFAULT_CONTEXT, DecoderSize, check_family, ffn_hidden


def decoder_config(size: DecoderSize, vocab_size: int, family: str = "llama", context: int = DEFAULT_CONTEXT,
                   tie_embeddings: bool = False, dropout: float = 0.0):
    """The transformers config of a ladder rung; only depth, width and heads vary."""
    check_family(family)
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=context, n_embd=size.d_model, n_layer=size.n_layer,
            n_head=size.n_head, n_inner=ffn_hidden(size.d_model, family), resid_pdrop=dropout,
            embd_pdrop=dropout, attn_pdrop=dropout, tie_word_embeddings=tie_embeddings,
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
