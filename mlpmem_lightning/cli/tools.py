"""Subcommands around a trained model: generate, export, and the speed benchmarks."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlpmem_lightning.cli.argtypes import (
    device,
    non_negative,
    non_negative_float,
    positive,
    positive_float,
    top_p,
    unit_interval,
)
from mlpmem_lightning.cli.command import Command, csv_list
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.settings import INDEXES, KNN


# -- generate and export ---------------------------------------------------------------------
def args_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", required=True, help="DecoderLM .ckpt or run directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=positive, default=50)
    p.add_argument("--memory", help="MemoryLM checkpoint or exported memory directory")
    p.add_argument("--datastore", help="datastore directory: generate with the kNN-LM")
    p.add_argument("--lambda", dest="lam", type=unit_interval, default=0.25,
                   help="weight of the memory / kNN distribution")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0: greedy; else sampling temperature")
    p.add_argument("--top-p", type=top_p, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--k", type=positive, default=KNN.k, help="kNN-LM neighbours")
    p.add_argument("--knn-temperature", type=positive_float, default=KNN.temperature, help="kNN-LM T in softmax(-d/T)")
    p.add_argument("--index", default=KNN.index, choices=INDEXES)
    p.add_argument("--tokenizer", help="token store or tokenizer.json (default: the decoder's token store)")
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--seed", type=non_negative, default=0)


def cmd_generate(args: argparse.Namespace) -> None:
    from mlpmem_lightning.inference.generate import run_generate

    print(run_generate(args.decoder, args.prompt, args.max_new_tokens, args.memory, args.datastore, args.lam,
                       args.temperature, args.top_p, args.k, args.knn_temperature, args.index, args.tokenizer,
                       args.device, args.seed))


def args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="MemoryLM checkpoint (.ckpt)")
    p.add_argument("--out", required=True, type=Path)


def cmd_export(args: argparse.Namespace) -> None:
    from mlpmem_lightning.core.artifacts import check_out_dir
    from mlpmem_lightning.inference.generate import load_memory_checkpoint

    check_out_dir(args.out)
    out = load_memory_checkpoint(args.checkpoint).export(args.out)
    print(f"memory exported to {out}")


# -- bench ------------------------------------------------------------------------------------
SECTIONS = ("train", "targets", "generate", "memory", "speed_claim")


def args_bench(p: argparse.ArgumentParser) -> None:
    from mlpmem_lightning.knn.search import REGISTRY

    p.add_argument("--sections", type=csv_list, default=list(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=Path("analysis/bench"), help="CSV + bench.md directory")
    p.add_argument("--data", default="runs/tokens/wiki-summaries", help="token store for the training sections")
    p.add_argument("--sizes", type=csv_list, default=["1.6m", "6m", "12m", "25m", "50m", "100m", "150m"],
                   help="decoder sizes for train (and memory)")
    p.add_argument("--train-modes", type=csv_list, default=["eager", "compiled", "graph"],
                   help="train and memory modes (train: each against the in-run plain-PyTorch reference): eager, "
                        "compiled, graph (compiled + the step as a CUDA graph)")
    p.add_argument("--batch", type=int, default=64, help="train: windows per step")
    p.add_argument("--seq-len", type=int, default=256, help="train: tokens per window")
    p.add_argument("--steps", type=int, default=30, help="train: timed steps (after 10 untimed)")
    p.add_argument("--log-every-n-steps", type=positive, default=50,
                   help="train: the Trainer's logging interval (the GPU trainer's is 50; 1 shows what logging costs)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="train: skip the plain-PyTorch reference (several bench processes sharing one GPU)")
    p.add_argument("--rows", type=lambda s: [int(float(x)) for x in s.split(",")], default=[1_000_000, 3_000_000,
                   10_000_000], help="datastore sizes for targets (e.g. 1e6,3e6,1e7)")
    p.add_argument("--targets-backends", type=csv_list, default=list(REGISTRY),
                   help="targets backends besides exact search (the recall reference), from the search registry: "
                        f"{', '.join(REGISTRY)}")
    p.add_argument("--generate-sizes", type=csv_list, default=["12m"], help="decoder sizes for generate")
    p.add_argument("--datastore-rows", type=positive, default=10_000_000, help="kNN-LM datastore keys for generate")
    p.add_argument("--claim-sizes", type=csv_list, default=["25m", "100m"],
                   help="speed_claim: decoder sizes N, each against a decoder of ~N/2 + a memory of ~N/2")
    p.add_argument("--memory-sizes", type=csv_list, default=["6m", "12m"], help="decoder sizes for memory training")
    p.add_argument("--work", type=Path, default=Path("runs/bench"), help="scratch space (synthetic datastores)")
    p.add_argument("--repeats", type=positive, default=3, help="timed generate calls per row (median)")
    p.add_argument("--profile", action="store_true", help="also write torch-profiler tables into --out")


def cmd_bench(args: argparse.Namespace) -> None:
    from mlpmem_lightning.bench import run_bench

    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown bench sections {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    from mlpmem_lightning.bench import TRAIN_MODES

    if bad := sorted(set(args.train_modes) - set(TRAIN_MODES)):
        raise UserError(f"unknown --train-modes {', '.join(bad)}: choose from {', '.join(TRAIN_MODES)}")
    run_bench(args.sections, args.out, args.data, args.sizes, args.rows, args.work, args.train_modes,
              batch=args.batch, seq_len=args.seq_len, steps=args.steps, reference=args.reference,
              log_every_n_steps=args.log_every_n_steps,
              profile=args.profile, generate_sizes=args.generate_sizes, datastore_rows=args.datastore_rows,
              memory_sizes=args.memory_sizes, memory_train_modes=args.train_modes, claim_sizes=args.claim_sizes,
              repeats=args.repeats, targets_backends=tuple(args.targets_backends))
    print(f"bench: {', '.join(args.sections)} -> {args.out / 'bench.md'}")




COMMANDS = (
    Command("generate", "prompt -> text: decoder alone, + MLP Memory (--memory) or kNN-LM (--datastore)",
            args_generate, cmd_generate),
    Command("export", "MemoryLM checkpoint -> memory directory (config.json + model.safetensors)", args_export,
            cmd_export),
    Command("bench", "throughput of every stage (train, targets, generate, memory) -> CSVs + bench.md", args_bench,
            cmd_bench),
)
