"""Loading a trained decoder for the later stages, and fingerprinting its weights.

A decoder is given as a ``DecoderLM`` checkpoint (``.ckpt``), a run directory (its
``checkpoints/best.ckpt``), or a transformers causal-LM directory (``config.json`` +
weights) of a supported family. The fingerprint hashes the weights themselves, so the
datastore, targets and memories made from a decoder can be checked against it whatever
file it was loaded from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .errors import UserError

SUPPORTED_FAMILIES = ("llama", "gpt2", "mistral", "qwen2")


@dataclass
class LoadedDecoder:
    net: PreTrainedModel
    fingerprint: str
    source: str
    data_fingerprint: str | None = None  # the token store it was trained on, when known
    seq_len: int | None = None  # the window length it was trained with, when known


def weights_fingerprint(net: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (buffers such as RoPE caches excluded)."""
    h = hashlib.sha256()
    for name, p in sorted(net.named_parameters()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir() and (path / "checkpoints" / "best.ckpt").is_file():
        return path / "checkpoints" / "best.ckpt"
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        return path
    raise UserError(f"no decoder at {path}: pass a .ckpt file, a run directory with checkpoints/best.ckpt, "
                    "or a transformers model directory")


def load_decoder(path: str | Path, map_location: str = "cpu") -> LoadedDecoder:
    """Load a frozen decoder in eval mode from any of the accepted forms."""
    path = resolve_checkpoint(path)
    if path.is_dir():
        return _load_hf(path)
    from .decoder_lm import DecoderLM

    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    cls = ckpt.get("hyper_parameters", {}).get("_class_path", "") or ""
    if "state_dict" not in ckpt or not any(k.startswith("net.") for k in ckpt["state_dict"]):
        raise UserError(f"{path} is not a DecoderLM checkpoint {cls}: pass the decoder's checkpoint")
    try:
        module = DecoderLM.load_from_checkpoint(path, map_location=map_location)
    except (RuntimeError, TypeError, KeyError) as err:
        raise UserError(f"{path} is not a DecoderLM checkpoint ({str(err).splitlines()[0]}): "
                        "pass the decoder's checkpoint") from None
    net = module.net.eval().requires_grad_(False)
    seq_len = (ckpt.get("datamodule_hyper_parameters") or {}).get("seq_len")
    return LoadedDecoder(net, weights_fingerprint(net), str(path), module.hparams.data_fingerprint, seq_len)


def _load_hf(path: Path) -> LoadedDecoder:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_FAMILIES:
        raise UserError(f"{path} is a {config.model_type!r} model: supported families are "
                        f"{', '.join(SUPPORTED_FAMILIES)}")
    net = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval().requires_grad_(False)
    return LoadedDecoder(net, weights_fingerprint(net), str(path))
