"""Memory rungs for any base decoder: ``x0.25``, ``x0.5``, ``x1``, ``x2`` … × the base's non-embedding parameters.

The ladder's memory rungs (``mem-6m`` …) are matched to ladder decoders; a pretrained base (SmolLM2-135M, a
GPT-2) has its own width and depth, so its memories are named by a parameter ratio and resolved against the
loaded decoder:

- width = the base's hidden size, so the memory reads the key without a projection and its head can start
  from the base's (``init_head_from_decoder``) when asked;
- depth = round(1.5 × base layers × √ratio), at least 1: the paper's 1.5× depth at ratio 1, and both depth and
  FFN width grow with the ratio, so shapes change monotonically along the rungs;
- FFN hidden size solved in closed form (a multiple of 32, at least 32) so that the memory's non-embedding
  parameters come closest to ratio × the base's.
"""

from __future__ import annotations

import math
import re

from torch import nn

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.ladder import MEMORY_DEPTH_RATIO, MEMORY_FFN_MULTIPLE, memory_non_embedding_count

RELATIVE = re.compile(r"^x(\d+(?:\.\d+)?)$")
PAPER_MEMORY_LR = 5e-4  # Binn0/MLPMemory's memory LR: the default when a base-relative memory has no --model.lr


def is_relative(size: str | None) -> bool:
    """Whether ``size`` names a base-relative memory (``x0.5``) rather than a ladder rung."""
    return size is not None and RELATIVE.match(size) is not None


def ratio_of(size: str) -> float:
    match = RELATIVE.match(size)
    ratio = float(match.group(1)) if match else 0.0
    if ratio <= 0:
        raise UserError(f"memory size {size!r} is not a positive ratio: write it as x0.25, x0.5, x1, x2 …")
    return ratio


def base_non_embedding_params(net: nn.Module) -> int:
    """The base's parameters without its token and position embeddings and its output head (Kaplan et al.)."""
    skip = {id(m.weight) for m in (net.get_input_embeddings(), net.get_output_embeddings()) if m is not None}
    for name, module in net.named_modules():  # GPT-2's learned positions (wpe) are embeddings too
        if isinstance(module, nn.Embedding) and name.split(".")[-1] in ("wpe", "embed_positions"):
            skip.add(id(module.weight))
    return sum(p.numel() for p in net.parameters() if id(p) not in skip)


def relative_shape(size: str, d_model: int, base_layers: int, base_non_embedding: int,
                   block: str = "swiglu") -> tuple[int, int, int]:
    """(n_layer, ffn, target non-embedding params) of the memory ``size`` for a base of these dimensions."""
    ratio = ratio_of(size)
    target = ratio * base_non_embedding
    n_layer = max(1, int(MEMORY_DEPTH_RATIO * base_layers * math.sqrt(ratio) + 0.5))
    b = memory_non_embedding_count(n_layer, d_model, 0, d_model, block)
    a = memory_non_embedding_count(n_layer, d_model, 1, d_model, block) - b
    m = MEMORY_FFN_MULTIPLE
    return n_layer, max(m, m * round((target - b) / a / m)), int(target)


def relative_memory_config(size: str, net: nn.Module, block: str = "swiglu", dropout: float = 0.0):
    """The :class:`~.memory.MemoryConfig` of the base-relative memory ``size`` for the decoder ``net``."""
    from mlpmem_lightning.models.memory import MemoryConfig

    cfg = net.config
    n_layer, ffn, _ = relative_shape(size, cfg.hidden_size, cfg.num_hidden_layers, base_non_embedding_params(net),
                                     block)
    return MemoryConfig(input_dim=cfg.hidden_size, d_model=cfg.hidden_size, n_layer=n_layer, ffn=ffn,
                        vocab_size=cfg.vocab_size, block=block, dropout=dropout)


def relative_config_for_rung(size: str, rung, family: str, vocab_size: int, block: str = "swiglu"):
    """The same memory for a ladder decoder, from its rung alone (torch-free: a sweep counts it before building):
    what :func:`relative_memory_config` builds on the loaded decoder of that rung."""
    from mlpmem_lightning.models.families import get_family
    from mlpmem_lightning.models.memory import MemoryConfig

    n_layer, ffn, _ = relative_shape(size, rung.d_model, rung.n_layer, get_family(family).non_embedding_params(rung),
                                     block)
    return MemoryConfig(input_dim=rung.d_model, d_model=rung.d_model, n_layer=n_layer, ffn=ffn,
                        vocab_size=vocab_size, block=block)
