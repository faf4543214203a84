"""Loading a trained decoder for the later stages, and fingerprinting its weights.

A decoder is given as a ``DecoderLM`` checkpoint (``.ckpt``), a run directory (its
``checkpoints/best.ckpt``), or a transformers causal-LM directory (``config.json`` +
weights) whose model type a registered family loads (``models/families/``). Either way the
loaded decoder names its family, which later stages count its FLOPs and parameters by. The
fingerprint hashes the weights themselves, so the datastore, targets and memories made from a
decoder can be checked against it whatever file it was loaded from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.decoder import build_decoder
from mlpmem_lightning.models.families import FAMILIES, family_for_model_type, model_types
from mlpmem_lightning.models.ladder import DEFAULT_CONTEXT, get_size


@dataclass
class LoadedDecoder:
    net: PreTrainedModel
    fingerprint: str
    source: str
    data_fingerprint: str | None = None  # the token store it was trained on, when known
    seq_len: int | None = None  # the window length it was trained with, when known
    size_name: str | None = None  # its ladder rung, when it is a DecoderLM
    token_store: str | None = None  # the path of the token store it was trained on, when known
    tokenizer_sha256: str | None = None  # sha256 of that store's tokenizer.json, when recorded
    family: str = "llama"  # its registered decoder family: what its FLOPs and parameters are counted as
    tokenizer_fingerprint: str | None = None  # vocabulary/merges hash of its tokenizer, when known


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
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated or foreign files fail in many ways (zip, pickle, EOF)
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}): it is truncated or not a "
                        "checkpoint; pass another one") from None
    hp = ckpt.get("hyper_parameters") or {} if isinstance(ckpt, dict) else {}
    state = {k[len("net."):]: v for k, v in ((ckpt.get("state_dict") if hp else None) or {}).items()
             if k.startswith("net.")}
    if not state or "size" not in hp or hp.get("vocab_size") is None:
        raise UserError(f"{path} is not a DecoderLM checkpoint: pass the decoder's checkpoint")
    # Built from the recorded hyper-parameters, not through DecoderLM: no LightningModule is
    # constructed, so loading works inside another module's __init__ (LightningCLI's hparams context).
    family = _recorded_family(hp, path)
    if ckpt.get("hf_config"):  # started from a pretrained model (DecoderLM init_from): its own architecture
        from transformers import AutoConfig, AutoModelForCausalLM

        config = dict(ckpt["hf_config"])
        net = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config),
                                               attn_implementation="sdpa")
    else:
        net = build_decoder(get_size(hp["size"]), hp["vocab_size"], family, hp.get("context", DEFAULT_CONTEXT),
                            hp.get("tie_embeddings", False))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit a {hp['size']} decoder ({str(err).splitlines()[0]}): "
                        "pass the decoder's checkpoint") from None
    net = net.eval().requires_grad_(False)
    data_hp = ckpt.get("datamodule_hyper_parameters") or {}
    size_name = None if ckpt.get("hf_config") else hp["size"]
    return LoadedDecoder(net, weights_fingerprint(net), str(path), hp.get("data_fingerprint"), data_hp.get("seq_len"),
                         size_name, data_hp.get("token_store"), ckpt.get("tokenizer_sha256"), family,
                         ckpt.get("tokenizer_fingerprint"))


def _recorded_family(hp: dict, path: Path) -> str:
    """The family a DecoderLM checkpoint was trained as (checkpoints from before families were recorded: llama)."""
    family = hp.get("family", "llama")
    if family not in FAMILIES:
        raise UserError(f"{path} is a decoder of family {family!r}, which is not registered: register it in "
                        f"mlpmem_lightning/models/families/ (registered: {', '.join(FAMILIES)})")
    return family


def _load_hf(path: Path) -> LoadedDecoder:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in model_types():
        raise UserError(f"{path} is a {config.model_type!r} model: supported families are "
                        f"{', '.join(model_types())} (register another in mlpmem_lightning/models/families/)")
    family = family_for_model_type(config.model_type).name
    net = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval().requires_grad_(False)
    return LoadedDecoder(net, weights_fingerprint(net), str(path), family=family,
                         tokenizer_fingerprint=_dir_tokenizer_fingerprint(path))


def _dir_tokenizer_fingerprint(path: Path) -> str | None:
    """The fingerprint of a model directory's ``tokenizer.json`` (an imported decoder's manifest records it)."""
    from mlpmem_lightning.data.tokenizer import TOKENIZER_FILE, read_tokenizer, tokenizer_fingerprint

    manifest = path / "manifest.json"
    if manifest.is_file():
        recorded = (json.loads(manifest.read_text()).get("tokenizer") or {}).get("fingerprint")
        if recorded:
            return recorded
    return tokenizer_fingerprint(read_tokenizer(path / TOKENIZER_FILE)) if (path / TOKENIZER_FILE).is_file() else None
