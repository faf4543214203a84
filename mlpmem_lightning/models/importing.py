"""`mlpmem import-decoder`: a GGUF file or a transformers model directory -> a decoder directory.

The decoder directory is what every later stage accepts as a decoder (``datastore --decoder``, KNNLM and
MemoryLM ``--model.decoder``, ``generate``, ``prepare --tokenizer``): ``config.json`` and dequantised
``model.safetensors`` (float32 or bfloat16), the tokenizer alongside (``tokenizer.json``), and a
``manifest.json`` written last with the weights' fingerprint (:func:`~.loading.weights_fingerprint`, the
one later stages check) and the tokenizer's (:func:`~mlpmem_lightning.data.tokenizer.tokenizer_fingerprint`,
the one token stores are checked against). A GGUF file is read by transformers through the ``gguf`` package
(install the ``gguf`` extra); quantised tensors are dequantised on the way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.writer import ArtifactWriter

log = logging.getLogger(__name__)
KIND = "decoder"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt")


def source_identity(source: Path) -> dict[str, Any]:
    """What decides the imported bytes: the GGUF file's sha256, or the sha256 of a directory's model files."""
    if source.is_file():
        return {"name": source.name, "sha256": artifacts.hash_file(source)}
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and p.name != artifacts.MANIFEST)
    return {"name": source.name, "sha256": artifacts.hash_json({p.name: artifacts.hash_file(p) for p in files})}


def _check_source(source: Path) -> None:
    if source.is_file() and source.suffix == ".gguf":
        try:
            import gguf  # noqa: F401  (transformers needs it to read the file)
        except ImportError:
            raise UserError("reading a GGUF file needs the gguf package: pip install 'mlpmem-lightning[gguf]'") \
                from None
        return
    if source.is_dir() and (source / "config.json").is_file():
        return
    raise UserError(f"cannot import {source}: pass a .gguf file or a transformers model directory "
                    "(config.json + weights + tokenizer)")


def _load(source: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The model and its (fast) tokenizer, from a GGUF file or a model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, extra = (source.parent, {"gguf_file": source.name}) if source.is_file() else (source, {})
    try:
        tok = AutoTokenizer.from_pretrained(where, **extra)
        net = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"transformers cannot load {source} ({first}): pass a GGUF file or a complete model "
                        "directory") from None
    if getattr(net, "hf_quantizer", None) is not None:
        net = _plain(net, dtype)
    if getattr(tok, "backend_tokenizer", None) is None:
        raise UserError(f"{source} has no fast tokenizer (tokenizer.json): convert its tokenizer first")
    return net, tok


def _plain(net: Any, dtype: torch.dtype) -> Any:
    """The same (already dequantised) weights in a model that carries no quantizer: transformers refuses to save
    a model loaded from GGUF, though its tensors are plain floats by then."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = net.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config), dtype=dtype)
    plain.load_state_dict(net.state_dict())
    return plain.eval()


def import_decoder(source: str | Path, out: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Build (or reuse) the decoder directory ``out`` from ``source``; returns its manifest."""
    from mlpmem_lightning.models.families import family_for_model_type, model_types

    source, out = Path(source), Path(out)
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    _check_source(source)
    writer = ArtifactWriter(out, KIND, {"source": source_identity(source), "dtype": dtype},
                            "is a decoder imported from another source or dtype", inputs=(source,))
    if (manifest := writer.reuse()) is not None:
        return manifest
    with writer.open(resume=False):  # a partial import is redone: it is deterministic
        net, tok = _load(source, DTYPES[dtype])
        model_type = net.config.model_type
        if model_type not in model_types():
            raise UserError(f"{source} is a {model_type!r} model: supported families are "
                            f"{', '.join(model_types())} (register another in mlpmem_lightning/models/families/)")
        net.save_pretrained(out)
        tok.save_pretrained(out)
        return writer.finish(lambda: _fields(out, family_for_model_type(model_type).name), files=_files(out))


def _files(out: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".json")
                        and p.name not in (artifacts.MANIFEST, "in_progress.json")))


def _fields(out: Path, family: str) -> dict[str, Any]:
    """Fingerprints taken from the directory as later stages load it, so they compare equal there."""
    from mlpmem_lightning.data.tokenizer import TOKENIZER_FILE, read_tokenizer, tokenizer_fingerprint
    from mlpmem_lightning.models.loading import load_decoder

    dec = load_decoder(out)
    cfg = dec.net.config
    tok = out / TOKENIZER_FILE
    return {"family": family, "fingerprint": dec.fingerprint,
            "tokenizer": {"file": TOKENIZER_FILE, "fingerprint": tokenizer_fingerprint(read_tokenizer(tok))}
            if tok.is_file() else None,
            "vocab_size": int(cfg.vocab_size), "hidden_size": int(cfg.hidden_size),
            "num_hidden_layers": int(cfg.num_hidden_layers),
            "params": int(sum(p.numel() for p in dec.net.parameters()))}


def export_decoder(checkpoint: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> dict[str, Any]:
    """A ``DecoderLM`` checkpoint (or run directory) -> a transformers directory (``from_pretrained`` loads it)
    with the tokenizer of the token store it was trained on (or ``tokenizer``) alongside, manifest last."""
    from mlpmem_lightning.models.loading import load_decoder, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    if path.is_dir():
        raise UserError(f"{checkpoint} is already a transformers directory: pass a DecoderLM checkpoint")
    dec = load_decoder(path)
    tok_file = _tokenizer_of(dec, tokenizer)
    writer = ArtifactWriter(out, KIND, {"source": {"name": path.name, "fingerprint": dec.fingerprint},
                                        "dtype": str(next(dec.net.parameters()).dtype).removeprefix("torch.")},
                            "is a decoder exported from another checkpoint", inputs=(path,))
    if (manifest := writer.reuse()) is not None:
        return manifest
    with writer.open(resume=False):
        dec.net.save_pretrained(writer.out)
        if tok_file is not None:
            from mlpmem_lightning.data.tokenizer import TOKENIZER_FILE, read_tokenizer

            read_tokenizer(tok_file).save(str(writer.out / TOKENIZER_FILE))
        return writer.finish(lambda: _fields(writer.out, dec.family), files=_files(writer.out))


def _tokenizer_of(dec: Any, tokenizer: str | Path | None) -> Path | None:
    """The ``tokenizer.json`` to ship with an exported decoder: the one given, else its token store's, if any."""
    if tokenizer is not None:
        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"--tokenizer {tokenizer} has no tokenizer.json: pass a token store or a tokenizer.json")
        return path
    if dec.token_store and (Path(dec.token_store) / "tokenizer.json").is_file():
        return Path(dec.token_store) / "tokenizer.json"
    log.warning("%s records no token store with a tokenizer.json: exported without a tokenizer (pass --tokenizer)",
                dec.source)
    return None
