"""The `mlpmem` console script.

``fit``, ``validate`` and ``test`` are LightningCLI (``--model`` picks the
LightningModule, the data is always ``LMDataModule``); every other subcommand is a
pipeline stage with plain argparse options. Errors a user can fix (``UserError``)
print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import EXIT_USER_ERROR, UserError

LIGHTNING_COMMANDS = ("fit", "validate", "test")
log = logging.getLogger("mlpmem_lightning")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            from .lightning_cli import run_cli

            run_cli(argv)
        else:
            args = build_parser().parse_args(argv)
            if not hasattr(args, "func"):
                build_parser().print_help()
                sys.exit(EXIT_USER_ERROR)
            args.func(args)
    except UserError as err:
        print(f"mlpmem: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"mlpmem: error: no space left on the device{where}: free some space or pass another --out, then run "
              "the same command again (finished artifacts are reused, the partial one is resumed or rebuilt)",
              file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _setup_logging() -> None:
    """Our stages log progress at INFO; Lightning keeps its own handler, so no root handler."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlpmem", description="MLP Memory scaling studies: decoder-only, kNN-LM and decoder + MLP Memory.",
        epilog="Each subcommand has its own --help.")
    sub = parser.add_subparsers(title="subcommands", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (--model DecoderLM|KNNLM|MemoryLM, --config …, --print_config)",
                       add_help=False)
    _add(sub, "prepare", "corpus -> tokenizer -> token store", _cmd_prepare, _args_prepare)
    _add(sub, "sizes", "print the size ladder with parameters and FLOPs per token", _cmd_sizes, _args_sizes)
    _add(sub, "demo", "a small end-to-end study on the embedded corpus (CPU)", _cmd_demo, _args_demo)
    _add(sub, "datastore", "decoder + token store -> kNN datastore (keys, values, optional index)",
         _cmd_datastore, _args_datastore)
    _add(sub, "targets", "datastore -> sparse kNN target distributions (ids.npy, probs.npy)",
         _cmd_targets, _args_targets)
    _add(sub, "generate", "prompt -> text: decoder alone, + MLP Memory (--memory) or kNN-LM (--datastore)",
         _cmd_generate, _args_generate)
    _add(sub, "export", "MemoryLM checkpoint -> memory directory (config.json + model.safetensors)",
         _cmd_export, _args_export)
    _add(sub, "sweep", "Optuna study over decoder and memory sizes -> results.csv", _cmd_sweep, _args_sweep)
    _add(sub, "report", "results.csv -> power-law fits, plots, report.md", _cmd_report, _args_report)
    _add(sub, "bench", "throughput of every stage (train, targets, generate, memory) -> CSVs + bench.md",
         _cmd_bench, _args_bench)
    return parser


def _add(sub, name: str, help: str, func: Callable, add_args: Callable) -> None:
    p = sub.add_parser(name, help=help, description=help)
    add_args(p)
    p.set_defaults(func=func)


# -- bench ------------------------------------------------------------------------------------
SECTIONS = ("train", "targets", "generate", "memory")


def _args_bench(p: argparse.ArgumentParser) -> None:
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--sections", type=csv, default=list(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=Path("analysis/bench"), help="CSV + bench.md directory")
    p.add_argument("--data", default="runs/tokens/wiki-summaries", help="token store for the training sections")
    p.add_argument("--sizes", type=csv, default=["1.6m", "6m", "12m", "25m", "50m", "100m", "150m"],
                   help="decoder sizes for train (and memory)")
    p.add_argument("--compile-sizes", type=csv, default=["100m", "150m"], help="also train these with torch.compile")
    p.add_argument("--rows", type=lambda s: [int(float(x)) for x in s.split(",")], default=[1_000_000, 3_000_000,
                   10_000_000], help="datastore sizes for targets (e.g. 1e6,3e6,1e7)")
    p.add_argument("--targets-backends", type=csv, default=["clustered", "torch-ivf", "faiss"],
                   help="targets backends besides exact search (the recall reference): clustered, torch-ivf, faiss")
    p.add_argument("--generate-sizes", type=csv, default=["12m"], help="decoder sizes for generate")
    p.add_argument("--datastore-rows", type=int, default=10_000_000, help="kNN-LM datastore keys for generate")
    p.add_argument("--memory-sizes", type=csv, default=["6m", "12m"], help="decoder sizes for memory training")
    p.add_argument("--work", type=Path, default=Path("runs/bench"), help="scratch space (synthetic datastores)")
    p.add_argument("--repeats", type=int, default=3, help="timed generate calls per row (median)")
    p.add_argument("--profile", action="store_true", help="also write torch-profiler tables into --out")


def _cmd_bench(args: argparse.Namespace) -> None:
    from .bench import run_bench

    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown bench sections {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    run_bench(args.sections, args.out, args.data, args.sizes, args.rows, args.work, args.compile_sizes,
              profile=args.profile, generate_sizes=args.generate_sizes, datastore_rows=args.datastore_rows,
              memory_sizes=args.memory_sizes, repeats=args.repeats, targets_backends=tuple(args.targets_backends))
    print(f"bench: {', '.join(args.sections)} -> {args.out / 'bench.md'}")


# -- prepare -----------------------------------------------------------------------------------
def _args_prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default="wiki-summaries",
                   help="registry name (see --list), a local .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG]")
    p.add_argument("--out", type=Path, help="token store directory (default: runs/tokens/<corpus>)")
    p.add_argument("--tokenizer", default="bpe",
                   help="'bpe' trains a byte-level BPE on the train split; "
                        "else a tokenizer.json or tokenizer directory")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size (with --tokenizer bpe)")
    p.add_argument("--valid-fraction", type=float, default=0.05, help="share of documents in valid")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of documents in test")
    p.add_argument("--seed", type=int, default=0, help="seed of the document split")
    p.add_argument("--max-documents", type=int, help="use only the first N documents (quick experiments)")
    p.add_argument("--num-proc", type=int, help="tokenizer processes (default: min(4, cores))")
    p.add_argument("--list", action="store_true", help="list the registry's corpora and exit")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from .corpora import list_corpora
    from .token_store import PrepareSettings, prepare

    if args.list:
        print("\n".join(list_corpora()))
        return
    settings = PrepareSettings(corpus=args.corpus, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                               valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
                               seed=args.seed, max_documents=args.max_documents)
    out = args.out or Path("runs/tokens") / Path(args.corpus.replace(":", "_")).name
    manifest = prepare(settings, out, num_proc=args.num_proc)
    tokens = manifest["tokens"]
    print(f"token store {out}: vocab {manifest['vocab_size']}, fingerprint {manifest['fingerprint']}")
    print("  " + ", ".join(f"{k} {v:,} tokens ({manifest['documents'][k]:,} docs)" for k, v in tokens.items()))


# -- datastore and targets -------------------------------------------------------------------
def _args_index(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("index (faiss; built next to the datastore when missing)")
    g.add_argument("--nlist", type=int, help="IVF lists (default: about N/256, at most 4096)")
    g.add_argument("--m", type=int, default=64, help="PQ sub-quantizers (ivfpq; must divide d)")
    g.add_argument("--nbits", type=int, default=8, help="bits per PQ code (ivfpq)")
    g.add_argument("--train-size", type=int, default=1_000_000, help="keys sampled to train the index")


def _args_datastore(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", required=True, help="DecoderLM .ckpt, run directory, or transformers model directory")
    p.add_argument("--data", required=True, type=Path, help="token store the decoder was trained on")
    p.add_argument("--out", required=True, type=Path, help="datastore directory")
    p.add_argument("--split", default="train", choices=["train", "valid", "test"])
    p.add_argument("--layer", type=int, default=-1, help="whose FFN input is the key (default: the last layer)")
    p.add_argument("--seq-len", type=int, help="window length (default: the decoder's training seq_len)")
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--devices", type=int, default=1,
                   help="processes, one per GPU (NCCL) or CPU processes (gloo), each writing its own rows")
    p.add_argument("--index", choices=["flat", "ivfflat", "ivfpq"], help="also build this faiss index")
    _args_index(p)


def _cmd_datastore(args: argparse.Namespace) -> None:
    from .datastore import KIND, DatastoreSettings, build_datastore

    settings = DatastoreSettings(split=args.split, layer=args.layer, seq_len=args.seq_len,
                                 batch_size=args.batch_size, precision=args.precision)
    m = _on_devices(build_datastore, KIND, args.out, args.devices, args.device, decoder=str(args.decoder),
                    data=str(args.data), settings=settings)
    if args.index:
        from .targets import TargetSettings, ensure_index

        ensure_index(args.out, TargetSettings(index=args.index, nlist=args.nlist, m=args.m, nbits=args.nbits,
                                              train_size=args.train_size))
    print(f"datastore {args.out}: {m['N']:,} rows x d={m['d']} (layer {m['layer']}, seq_len {m['seq_len']}), "
          f"fingerprint {m['fingerprint']}")


def _args_targets(p: argparse.ArgumentParser) -> None:
    from .targets import TargetSettings

    d = TargetSettings()
    p.add_argument("--datastore", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="targets directory")
    p.add_argument("--index", default=d.index, choices=["flat", "ivfflat", "ivfpq"], help="flat is exact search")
    p.add_argument("--k", type=int, default=d.k, help="neighbours per row (the row itself excluded)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="T in softmax(-d/T)")
    p.add_argument("--keep", type=int, default=d.keep, help="K: most probable tokens kept per row")
    p.add_argument("--nprobe", type=int, default=d.nprobe, help="IVF lists scanned per query")
    p.add_argument("--rerank", action="store_true", help="re-rank approximate candidates exactly")
    p.add_argument("--chunk", type=int, default=d.chunk, help="rows per search batch")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "clustered", "faiss"],
                   help="auto: torch exact (flat) or clustered IVF on CUDA, faiss on CPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--devices", type=int, default=1,
                   help="processes, one per GPU (NCCL) or CPU (gloo), each taking a share of the IVF lists "
                        "(clustered backend); the files are identical to a one-device run")
    p.add_argument("--mass-curve", type=int, metavar="ROWS",
                   help="only print the mass kept by K tokens, for K = 8 ... k, on ROWS sampled rows")
    _args_index(p)


def _on_devices(build: Callable[..., dict | None], kind: str, out: Path, devices: int, device: str,
                **kwargs) -> dict:
    """A rank-sharded stage in this process, or on ``devices`` processes (``ranks.spawn``); its manifest."""
    if devices <= 1:
        return build(out=out, device=device, **kwargs)
    from .artifacts import read_manifest
    from .ranks import spawn

    spawn(build, devices, out=str(out), **kwargs)
    return read_manifest(out, kind)


def _cmd_targets(args: argparse.Namespace) -> None:
    from .targets import KIND, TargetSettings, build_targets

    settings = TargetSettings(index=args.index, k=args.k, temperature=args.temperature, keep=args.keep,
                              nprobe=args.nprobe, rerank=args.rerank, chunk=args.chunk, nlist=args.nlist,
                              m=args.m, nbits=args.nbits, train_size=args.train_size)
    if args.mass_curve:
        from .targets import mass_curve

        curve = mass_curve(args.datastore, settings, args.mass_curve, backend=args.backend, device=args.device)
        print("K\tmean mass kept\trows keeping >= 99%")
        for K, v in curve.items():
            print(f"{K}\t{v['mean']:.4f}\t{v['rows_ge_99']:.3f}")
        return
    m = _on_devices(build_targets, KIND, args.out, args.devices, args.device, datastore=str(args.datastore),
                    settings=settings, backend=args.backend)
    print(f"targets {args.out}: {m['N']:,} rows, K={m['K']}, mass kept mean {m['mass_kept_mean']:.4f} "
          f"min {m['mass_kept_min']:.4f}")


# -- generate and export ---------------------------------------------------------------------
def _args_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", required=True, help="DecoderLM .ckpt or run directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--memory", help="MemoryLM checkpoint or exported memory directory")
    p.add_argument("--datastore", help="datastore directory: generate with the kNN-LM")
    p.add_argument("--lambda", dest="lam", type=float, default=0.25, help="weight of the memory / kNN distribution")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else sampling temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--k", type=int, default=1024, help="kNN-LM neighbours")
    p.add_argument("--knn-temperature", type=float, default=16.0, help="kNN-LM T in softmax(-d/T)")
    p.add_argument("--index", default="flat", choices=["flat", "ivfflat", "ivfpq"])
    p.add_argument("--tokenizer", help="token store or tokenizer.json (default: the decoder's token store)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def _cmd_generate(args: argparse.Namespace) -> None:
    from .generate import run_generate

    print(run_generate(args.decoder, args.prompt, args.max_new_tokens, args.memory, args.datastore, args.lam,
                       args.temperature, args.top_p, args.k, args.knn_temperature, args.index, args.tokenizer,
                       args.device, args.seed))


def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="MemoryLM checkpoint (.ckpt)")
    p.add_argument("--out", required=True, type=Path)


def _cmd_export(args: argparse.Namespace) -> None:
    from .memory_lm import MemoryLM

    out = MemoryLM.load_from_checkpoint(args.checkpoint, map_location="cpu").export(args.out)
    print(f"memory exported to {out}")


# -- sizes -------------------------------------------------------------------------------------
def _args_sizes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=256, help="context used in the attention FLOPs term")
    p.add_argument("--family", default="llama", choices=["llama", "gpt2"])
    p.add_argument("--tie", action="store_true", help="tied input embedding and output head")
    p.add_argument("--ladder", default="both", choices=["both", "decoder", "memory"],
                   help="which ladder (csv and json print one: decoder unless memory is asked for)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])


def _cmd_sizes(args: argparse.Namespace) -> None:
    import pandas as pd

    from .sizes import ladder_table, memory_ladder_table

    block = "gelu" if args.family == "gpt2" else "swiglu"
    tables = {"decoder": pd.DataFrame(ladder_table(args.vocab_size, args.seq_len, args.family, args.tie)),
              "memory": pd.DataFrame(memory_ladder_table(args.vocab_size, block))}
    if args.format != "table":
        df = tables["memory" if args.ladder == "memory" else "decoder"]
        print(df.to_csv(index=False) if args.format == "csv" else df.to_json(orient="records", indent=2), end="")
        return
    counts = {c: "{:,}".format for c in ("params_non_embedding", "params_total", "flops_per_token")}
    if args.ladder in ("both", "decoder"):
        print(f"decoder ladder ({args.family}, vocab {args.vocab_size}, seq_len {args.seq_len}; "
              "FLOPs per training token = 6*N_matmul + 12*n_layer*d_model*seq_len)")
        print(tables["decoder"].to_string(index=False, formatters={"lr": "{:.1e}".format, **counts}))
    if args.ladder in ("both", "memory"):
        print(f"\nmemory ladder ({block}, vocab {args.vocab_size}; matched to the decoder rung in non-embedding "
              "parameters at 1.5x its depth; FLOPs per training token = 6*N)")
        print(tables["memory"].to_string(index=False, formatters={"ratio_to_decoder": "{:.3f}".format, **counts}))


# -- sweep and report -----------------------------------------------------------------------------
def _args_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="sweep specification (see sweeps/)")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import run_sweep

    print(f"results: {run_sweep(args.config)}")


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, type=Path, help="results.csv (DESIGN.md schema)")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="split whose losses are fitted")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")


def _cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    print(f"report: {write_report(args.results, args.out, split=args.split, bootstrap=args.bootstrap)}")


# -- demo --------------------------------------------------------------------------------------
def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where every artifact of the demo goes")
    p.add_argument("--config", type=Path, help="sweep spec to run instead of sweeps/demo.yaml")


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import SPEC, run_demo

    run_demo(args.out, args.config or SPEC)


if __name__ == "__main__":
    main()
