"""Subcommands that bring a pretrained model in and take a trained decoder out: ``import-decoder``,
``export-decoder`` (both write a transformers directory with its tokenizer and a manifest; docs/pretrained.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlpmem_lightning.cli.command import Command


def args_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, type=Path,
                   help="a .gguf file (needs the gguf extra) or a transformers model directory")
    p.add_argument("--out", required=True, type=Path, help="the decoder directory to write")
    p.add_argument("--dtype", default="float32", help="float32 (default: exact dequantised values) or bfloat16")


def cmd_import(args: argparse.Namespace) -> None:
    from mlpmem_lightning.models.importing import import_decoder

    m = import_decoder(args.source, args.out, args.dtype)
    print(f"decoder {m['fingerprint']} ({m['family']}, width {m['hidden_size']}, {m['num_hidden_layers']} layers, "
          f"vocab {m['vocab_size']}) -> {args.out}")


def args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="DecoderLM checkpoint (.ckpt) or its run directory")
    p.add_argument("--out", required=True, type=Path, help="the transformers directory to write")
    p.add_argument("--tokenizer", default=None,
                   help="token store or tokenizer.json to ship (default: the one it was trained on)")


def cmd_export(args: argparse.Namespace) -> None:
    from mlpmem_lightning.models.importing import export_decoder

    m = export_decoder(args.checkpoint, args.out, args.tokenizer)
    print(f"decoder {m['fingerprint']} exported to {args.out} (AutoModelForCausalLM.from_pretrained loads it)")


COMMANDS = (
    Command("import-decoder", "a GGUF file or transformers directory -> a decoder directory (weights, tokenizer, "
            "manifest)", args_import, cmd_import),
    Command("export-decoder", "DecoderLM checkpoint -> transformers directory (from_pretrained loads it)",
            args_export, cmd_export),
)
