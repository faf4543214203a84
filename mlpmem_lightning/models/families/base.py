"""What a decoder family is: the one class a new family subclasses (see ``families/__init__.py``).

Everything that differs between decoder architectures lives on the family, so counts, builders,
loaders and the kNN key hook never branch on a family name. The counts are closed-form and
torch-free (``mlpmem sizes`` plans a sweep without building a model); only :meth:`~DecoderFamily.config`
and :meth:`~DecoderFamily.model_class` import transformers, when a model is actually built.

FLOPs follow the PaLM / nanoGPT convention: a training step costs
``6 * N_matmul + 12 * n_layer * d_model * seq_len`` FLOPs per token, where ``N_matmul`` is every
parameter that takes part in a matrix multiply (all non-embedding weights plus the output head; the
input embedding and learned positions are lookups) and the second term is the attention score and
value products, forward and backward, counted over the full (unmasked) sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from mlpmem_lightning.core.errors import UserError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

DEFAULT_CONTEXT = 1024


@dataclass(frozen=True)
class DecoderSize:
    """One rung of the ladder: the only things that vary with scale."""

    name: str
    n_layer: int
    d_model: int
    n_head: int
    lr: float


class DecoderFamily:
    """A decoder architecture: its transformers classes, its counts, and where its kNN key is.

    Subclass it in one file under ``models/families/`` and add one ``register_family`` line to the
    registry. A subclass sets the class attributes and implements the methods that raise
    ``NotImplementedError``; the aggregate counts and the FLOPs formula are shared.
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # transformers ``config.model_type`` values this family loads
    memory_block: ClassVar[str]  # the MLP Memory block whose FFN matches this family's ("swiglu" | "gelu")
    ffn_attribute: ClassVar[str] = "mlp"  # the FFN module of a layer; its *input* is the kNN key

    # -- the transformers model ----------------------------------------------------------------
    def config(self, size: DecoderSize, vocab_size: int, context: int, tie_embeddings: bool,
               dropout: float) -> PretrainedConfig:
        """The transformers config of a rung; only depth, width and heads vary along the ladder."""
        raise NotImplementedError

    def model_class(self) -> type[PreTrainedModel]:
        raise NotImplementedError

    def build(self, size: DecoderSize, vocab_size: int, context: int = DEFAULT_CONTEXT,
              tie_embeddings: bool = False, dropout: float = 0.0) -> PreTrainedModel:
        """A freshly initialised causal LM with PyTorch SDPA attention."""
        config = self.config(size, vocab_size, context, tie_embeddings, dropout)
        config._attn_implementation = "sdpa"
        return self.model_class()(config)

    # -- the kNN key ---------------------------------------------------------------------------
    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        """The transformer blocks, in order."""
        raise NotImplementedError

    def ffn_block(self, model: PreTrainedModel, layer: int = -1) -> nn.Module:
        """The FFN of ``layer`` (negative counts from the end): its input, after the block's pre-FFN norm,
        is the key of Khandelwal et al."""
        layers = self.layers(model)
        if not -len(layers) <= layer < len(layers):
            raise UserError(f"layer {layer} does not exist: the decoder has {len(layers)} layers")
        return getattr(layers[layer], self.ffn_attribute)

    # -- closed-form counts (checked against sum(p.numel()) in the tests) ------------------------
    def ffn_hidden(self, d_model: int) -> int:
        """Hidden width of the FFN at this model width."""
        raise NotImplementedError

    def layer_params(self, d_model: int) -> int:
        """Parameters of one transformer block."""
        raise NotImplementedError

    def final_norm_params(self, d_model: int) -> int:
        raise NotImplementedError

    def position_params(self, d_model: int, context: int) -> int:
        """Learned position embeddings (none for rotary families)."""
        return 0

    def non_embedding_params(self, size: DecoderSize) -> int:
        """Blocks plus the final norm: what scaling laws call N (Kaplan et al.)."""
        return size.n_layer * self.layer_params(size.d_model) + self.final_norm_params(size.d_model)

    def embedding_params(self, size: DecoderSize, vocab_size: int, tie: bool = False,
                         context: int = DEFAULT_CONTEXT) -> int:
        """Input embedding, untied output head and learned positions."""
        return vocab_size * size.d_model * (1 if tie else 2) + self.position_params(size.d_model, context)

    def total_params(self, size: DecoderSize, vocab_size: int, tie: bool = False,
                     context: int = DEFAULT_CONTEXT) -> int:
        return self.non_embedding_params(size) + self.embedding_params(size, vocab_size, tie, context)

    def flops_per_token(self, size: DecoderSize, vocab_size: int, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), see the module docstring."""
        matmul_params = self.non_embedding_params(size) + vocab_size * size.d_model
        return 6 * matmul_params + 12 * size.n_layer * size.d_model * seq_len

    def forward_flops_per_token(self, size: DecoderSize, vocab_size: int, seq_len: int) -> int:
        """Inference FLOPs per token: one third of a training step."""
        return self.flops_per_token(size, vocab_size, seq_len) // 3

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
