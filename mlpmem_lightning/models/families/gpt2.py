"""GPT-2: LayerNorm, GELU MLP at 4x width, biased projections, learned positions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpmem_lightning.models.families.base import DecoderFamily, DecoderSize

if TYPE_CHECKING:
    from torch import nn
    from transformers import GPT2Config, PreTrainedModel


class GPT2(DecoderFamily):
    name = "gpt2"
    model_types = ("gpt2",)
    memory_block = "gelu"

    def config(self, size: DecoderSize, vocab_size: int, context: int, tie_embeddings: bool,
               dropout: float) -> GPT2Config:
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size, n_positions=context, n_embd=size.d_model, n_layer=size.n_layer,
            n_head=size.n_head, n_inner=self.ffn_hidden(size.d_model), resid_pdrop=dropout,
            embd_pdrop=dropout, attn_pdrop=dropout, tie_word_embeddings=tie_embeddings,
            bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 is outside our vocabularies
        )

    def model_class(self) -> type[PreTrainedModel]:
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return model.transformer.h  # the FFN input is after ln_2

    def ffn_hidden(self, d_model: int) -> int:
        return 4 * d_model

    def layer_params(self, d_model: int) -> int:
        d, f = d_model, self.ffn_hidden(d_model)
        return (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # biased; two LayerNorms

    def final_norm_params(self, d_model: int) -> int:
        return 2 * d_model  # LayerNorm gain and bias

    def position_params(self, d_model: int, context: int) -> int:
        return context * d_model
