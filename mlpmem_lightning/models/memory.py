"""MLP Memory (Wei et al., arXiv 2508.01832): the network, its counts, and its export format.

Model code only (no training logic, no Lightning). The memory reads the hidden state that the
kNN-LM uses as its key (the decoder's last FFN input, ``input_dim`` wide) and predicts the kNN
distribution of the next token::

    x = proj(h)                      # only if input_dim != d_model
    x = x + FFN(Norm(x))             # n_layer times, no attention
    logits = head(Norm(x))           # its own vocabulary head

``block="swiglu"`` uses RMSNorm and a gated SiLU FFN (LLaMA); ``block="gelu"`` uses LayerNorm
and a GELU FFN with biases (GPT-2). With ``tie_head`` the head is the frozen decoder head: a
buffer, not a parameter, so the optimiser never sees it and it is not counted as the memory's.

An export is a directory with ``model.safetensors`` and ``config.json`` (written last); it loads
back with :func:`load_memory` using torch and safetensors alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlpmem_lightning import __version__
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.ladder import (
    check_block,
    get_memory_size,
    memory_ffn,
    memory_flops_count,
    memory_non_embedding_count,
)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
KIND = "mlp_memory"


@dataclass
class MemoryConfig:
    input_dim: int  # the decoder's hidden size = datastore key width
    d_model: int
    n_layer: int
    ffn: int
    vocab_size: int
    block: str = "swiglu"  # swiglu (RMSNorm) | gelu (LayerNorm)
    norm_eps: float = 1e-5
    tie_head: bool = False  # head = the decoder's head, frozen (see init_head_from)
    dropout: float = 0.0  # on each block's FFN output, train mode only (the paper's code: 0.1)

    def __post_init__(self) -> None:
        check_block(self.block)
        for name in ("input_dim", "d_model", "n_layer", "ffn", "vocab_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise UserError(f"memory {name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"memory dropout {self.dropout!r} must lie in [0, 1): fix --model.dropout")


def _norm(cfg: MemoryConfig) -> nn.Module:
    if cfg.block == "gelu":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, ffn: int):
        super().__init__()
        self.gate = nn.Linear(d_model, ffn, bias=False)
        self.up = nn.Linear(d_model, ffn, bias=False)
        self.down = nn.Linear(ffn, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GeluMLP(nn.Module):
    def __init__(self, d_model: int, ffn: int):
        super().__init__()
        self.up = nn.Linear(d_model, ffn)
        self.down = nn.Linear(ffn, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """x + FFN(Norm(x)): a transformer block without its attention half."""

    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.norm = _norm(cfg)
        self.mlp = SwiGLU(cfg.d_model, cfg.ffn) if cfg.block == "swiglu" else GeluMLP(cfg.d_model, cfg.ffn)
        self.drop = nn.Dropout(cfg.dropout)  # identity in eval mode (and at p=0): evaluation is deterministic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.mlp(self.norm(x)))


class MLPMemory(nn.Module):
    def __init__(self, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.input_dim, cfg.d_model, bias=False) if cfg.input_dim != cfg.d_model else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = _norm(cfg)
        if cfg.tie_head:  # persistent buffer: saved with the memory, never trained
            self.register_buffer("head_weight", torch.empty(cfg.vocab_size, cfg.d_model))
        else:
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, unit norms; the residual-stream writers
        (each block's down projection) get 0.02/sqrt(2L) so the stream's variance does not grow with depth."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.reset_parameters()
        for block in self.blocks:
            nn.init.normal_(block.mlp.down.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
        if self.cfg.tie_head:
            nn.init.normal_(self.head_weight, std=0.02)

    @property
    def head_w(self) -> torch.Tensor:
        """The [vocab, d_model] head matrix, whether trained (Linear) or tied (buffer)."""
        return self.head_weight if self.cfg.tie_head else self.head.weight

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> [..., d_model]: everything before the head (for fused losses)."""
        x = self.proj(h) if self.proj is not None else h
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> logits [..., vocab_size]."""
        return F.linear(self.features(h), self.head_w)

    @torch.no_grad()
    def init_head_from(self, decoder_head_weight: torch.Tensor) -> None:
        """Start from the decoder's output head: the memory then begins in the decoder's output space."""
        want = (self.cfg.vocab_size, self.cfg.d_model)
        if tuple(decoder_head_weight.shape) != want:
            raise UserError(
                f"decoder head {tuple(decoder_head_weight.shape)} does not fit the memory head {want}: "
                "the memory needs the decoder's vocabulary and d_model equal to the decoder's width"
            )
        self.head_w.copy_(decoder_head_weight.detach())


# ---- closed-form counts (sizes.py holds the torch-free formulas) -------------------------------


def memory_non_embedding_params(cfg: MemoryConfig) -> int:
    """Everything except the vocabulary head: input projection, blocks, final norm."""
    return memory_non_embedding_count(cfg.n_layer, cfg.d_model, cfg.ffn, cfg.input_dim, cfg.block)


def memory_params(cfg: MemoryConfig) -> int:
    """Trainable parameters (= sum(p.numel())): a tied head belongs to the decoder, not the memory."""
    head = 0 if cfg.tie_head else cfg.vocab_size * cfg.d_model
    return memory_non_embedding_params(cfg) + head


def memory_flops_per_token(cfg: MemoryConfig, train: bool = True) -> int:
    """6N per training token, 2N per forward token; N counts every weight incl. head and projection."""
    return memory_flops_count(memory_non_embedding_params(cfg), cfg.d_model, cfg.vocab_size, train,
                              head_trainable=not cfg.tie_head)


def memory_config(size_name: str, input_dim: int, vocab_size: int, block: str = "swiglu",
                  tie_head: bool = False, dropout: float = 0.0) -> MemoryConfig:
    """The config of a memory-ladder rung (a projection appears if input_dim differs from its width)."""
    s = get_memory_size(size_name)
    return MemoryConfig(input_dim=input_dim, d_model=s.d_model, n_layer=s.n_layer, ffn=memory_ffn(s, block),
                        vocab_size=vocab_size, block=block, tie_head=tie_head, dropout=dropout)


def build_memory(size_name: str, input_dim: int, vocab_size: int, block: str = "swiglu",
                 tie_head: bool = False, dropout: float = 0.0) -> MLPMemory:
    return MLPMemory(memory_config(size_name, input_dim, vocab_size, block, tie_head, dropout))


# ---- export ------------------------------------------------------------------------------------


def save_memory(model: MLPMemory, cfg: MemoryConfig, directory: str | Path,
                extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` then ``config.json`` (the completion marker), each atomically.

    An older ``config.json`` is removed first, so a crash mid-export never pairs old config with new weights.
    ``extra`` is any JSON metadata (decoder fingerprint, targets, training tokens ...).
    """
    from safetensors.torch import save_file

    from mlpmem_lightning.core.artifacts import atomic_write_text, fsync_rename, tmp_path

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).unlink(missing_ok=True)
    tmp = tmp_path(out / WEIGHTS)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    fsync_rename(tmp, out / WEIGHTS)
    meta = {"kind": KIND, "mlpmem_version": __version__, "config": asdict(cfg), "extra": dict(extra or {})}
    atomic_write_text(out / CONFIG, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_memory(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MLPMemory, dict[str, Any]]:
    """Rebuild an exported memory from its directory alone: (model in eval mode, extra metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"memory export {path} does not exist: train or export a memory first")
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise UserError(f"memory export {path} is incomplete (needs {CONFIG} and {WEIGHTS}): export it again")
    try:
        meta = json.loads((path / CONFIG).read_text())
        names = {f.name for f in fields(MemoryConfig)}
        if meta.get("kind") != KIND or not set(meta["config"]) <= names:
            raise ValueError(f"not an {KIND} config")
        cfg = MemoryConfig(**meta["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path / CONFIG} is not a memory config ({err}): export the memory again") from None
    try:
        state = load_file(str(path / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path / WEIGHTS} is unreadable ({err}): export the memory again") from None
    model = MLPMemory(cfg).to(device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path / WEIGHTS} does not match {CONFIG} ({err}): export the memory again") from None
    return model.eval(), meta["extra"]
