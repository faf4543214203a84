"""Llama: RMSNorm, SwiGLU, rotary positions, no biases (the ladder's default family).

Also loads Mistral and Qwen2 checkpoints: same block layout (``model.layers[i].mlp`` after
``post_attention_layernorm``), so the kNN key is found in the same place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpmem_lightning.models.families.base import DecoderFamily, DecoderSize

if TYPE_CHECKING:
    from torch import nn
    from transformers import LlamaConfig, PreTrainedModel

FFN_MULTIPLE = 64  # the SwiGLU hidden size is 8/3 d rounded up to this multiple


class Llama(DecoderFamily):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")
    memory_block = "swiglu"

    def config(self, size: DecoderSize, vocab_size: int, context: int, tie_embeddings: bool,
               dropout: float) -> LlamaConfig:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=size.d_model, intermediate_size=self.ffn_hidden(size.d_model),
            num_hidden_layers=size.n_layer, num_attention_heads=size.n_head, num_key_value_heads=size.n_head,
            max_position_embeddings=context, rms_norm_eps=1e-5, attention_dropout=dropout,
            tie_word_embeddings=tie_embeddings, attention_bias=False, mlp_bias=False,
        )

    def model_class(self) -> type[PreTrainedModel]:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM

    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        return model.model.layers

    def ffn_hidden(self, d_model: int) -> int:
        """SwiGLU keeps the 4d MLP's parameter count with 2/3 of the width (LLaMA)."""
        hidden = int(8 * d_model / 3)
        return FFN_MULTIPLE * -(-hidden // FFN_MULTIPLE)

    def layer_params(self, d_model: int) -> int:
        d, f = d_model, self.ffn_hidden(d_model)
        return 4 * d * d + 3 * d * f + 2 * d  # q, k, v, o and gate, up, down without biases; two RMSNorm gains

    def final_norm_params(self, d_model: int) -> int:
        return d_model  # RMSNorm gain
