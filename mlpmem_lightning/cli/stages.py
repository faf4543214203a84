"""Subcommands of the pipeline's first steps: prepare -> sizes -> datastore -> targets."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from mlpmem_lightning.cli.argtypes import device, non_negative, positive, positive_float
from mlpmem_lightning.cli.command import Command


# -- prepare -----------------------------------------------------------------------------------
def args_prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default="wiki-summaries",
                   help="registry name (see --list), a local .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG]")
    p.add_argument("--out", type=Path, help="token store directory (default: runs/tokens/<corpus>)")
    p.add_argument("--tokenizer", default="bpe",
                   help="'bpe' trains a byte-level BPE on the train split; "
                        "else a tokenizer.json or tokenizer directory")
    p.add_argument("--vocab-size", type=positive, default=8192, help="BPE vocabulary size (with --tokenizer bpe)")
    p.add_argument("--valid-fraction", type=float, default=0.05, help="share of documents in valid")
    p.add_argument("--test-fraction", type=float, default=0.05, help="share of documents in test")
    p.add_argument("--seed", type=non_negative, default=0, help="seed of the document split")
    p.add_argument("--max-documents", type=positive, help="use only the first N documents (quick experiments)")
    p.add_argument("--num-proc", type=positive, help="tokenizer processes (default: min(4, cores))")
    p.add_argument("--list", action="store_true", help="list the registry's corpora and exit")


def cmd_prepare(args: argparse.Namespace) -> None:
    from mlpmem_lightning.data.corpora import list_corpora
    from mlpmem_lightning.data.token_store import PrepareSettings, prepare

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


# -- sizes -------------------------------------------------------------------------------------
def args_sizes(p: argparse.ArgumentParser) -> None:
    from mlpmem_lightning.models.families import FAMILIES

    p.add_argument("--vocab-size", type=positive, default=8192)
    p.add_argument("--seq-len", type=positive, default=256, help="context used in the attention FLOPs term")
    p.add_argument("--family", default="llama", choices=list(FAMILIES))
    p.add_argument("--tie", action="store_true", help="tied input embedding and output head")
    p.add_argument("--ladder", default="both", choices=["both", "decoder", "memory"],
                   help="which ladder (csv and json print one: decoder unless memory is asked for)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--legacy", action="store_true", help="the ladder before issue #15 (its rungs still load)")


def cmd_sizes(args: argparse.Namespace) -> None:
    import pandas as pd

    from mlpmem_lightning.models.families import get_family
    from mlpmem_lightning.models.ladder import LADDER, LEGACY_LADDER, ladder_table, memory_ladder_table

    block = get_family(args.family).memory_block
    rungs = LEGACY_LADDER if args.legacy else LADDER
    tables = {"decoder": pd.DataFrame(ladder_table(args.vocab_size, args.seq_len, args.family, args.tie, rungs)),
              "memory": pd.DataFrame(memory_ladder_table(args.vocab_size, block, args.legacy))}
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


# -- datastore and targets -------------------------------------------------------------------
def args_index(p: argparse.ArgumentParser) -> None:
    from mlpmem_lightning.knn.settings import TARGETS as d

    g = p.add_argument_group("index (faiss; built next to the datastore when missing)")
    g.add_argument("--nlist", type=positive, default=d.nlist, help="IVF lists (default: about N/256, at most 4096)")
    g.add_argument("--m", type=positive, default=d.m, help="PQ sub-quantizers (ivfpq; must divide d)")
    g.add_argument("--nbits", type=positive, default=d.nbits, help="bits per PQ code (ivfpq)")
    g.add_argument("--train-size", type=positive, default=d.train_size, help="keys sampled to train the index")


def args_datastore(p: argparse.ArgumentParser) -> None:
    from mlpmem_lightning.knn.settings import INDEXES

    p.add_argument("--decoder", required=True, help="DecoderLM .ckpt, run directory, or transformers model directory")
    p.add_argument("--data", required=True, type=Path, help="token store the decoder was trained on")
    p.add_argument("--out", required=True, type=Path, help="datastore directory")
    p.add_argument("--split", default="train", choices=["train", "valid", "test"])
    p.add_argument("--layer", type=int, default=-1, help="whose FFN input is the key (default: the last layer)")
    p.add_argument("--seq-len", type=positive, help="window length (default: the decoder's training seq_len)")
    p.add_argument("--batch-size", type=positive, default=32, help="windows per forward pass")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--devices", type=positive, default=1,
                   help="processes, one per GPU (NCCL) or CPU processes (gloo), each writing its own rows; under "
                        "torchrun the launcher's ranks are used instead")
    p.add_argument("--index", choices=INDEXES, help="also build this faiss index")
    args_index(p)


def cmd_datastore(args: argparse.Namespace) -> None:
    from mlpmem_lightning.knn.datastore import KIND, DatastoreSettings, build_datastore

    settings = DatastoreSettings(split=args.split, layer=args.layer, seq_len=args.seq_len,
                                 batch_size=args.batch_size, precision=args.precision)
    m = _on_devices(build_datastore, KIND, args.out, args.devices, args.device, decoder=str(args.decoder),
                    data=str(args.data), settings=settings)
    if m is None:
        return
    if args.index:
        from mlpmem_lightning.knn.targets import TargetSettings, ensure_index

        ensure_index(args.out, TargetSettings(index=args.index, nlist=args.nlist, m=args.m, nbits=args.nbits,
                                              train_size=args.train_size))
    print(f"datastore {args.out}: {m['N']:,} rows x d={m['d']} (layer {m['layer']}, seq_len {m['seq_len']}), "
          f"fingerprint {m['fingerprint']}")


def args_targets(p: argparse.ArgumentParser) -> None:
    from mlpmem_lightning.knn.search import REGISTRY, choices
    from mlpmem_lightning.knn.settings import INDEXES
    from mlpmem_lightning.knn.settings import TARGETS as d

    p.add_argument("--datastore", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="targets directory")
    p.add_argument("--index", default=d.index, choices=INDEXES, help="flat is exact search")
    p.add_argument("--k", type=positive, default=d.k, help="neighbours per row (the row itself excluded)")
    p.add_argument("--temperature", type=positive_float, default=d.temperature, help="T in softmax(-d/T)")
    p.add_argument("--keep", type=positive, default=d.keep, help="K: most probable tokens kept per row")
    p.add_argument("--nprobe", type=positive, default=d.nprobe, help="IVF lists scanned per query")
    p.add_argument("--rerank", action="store_true", default=d.rerank, help="re-rank approximate candidates exactly")
    p.add_argument("--chunk", type=positive, default=d.chunk, help="rows per search batch (row-chunk backends)")
    p.add_argument("--backend", default=d.backend, choices=choices(),
                   help="auto: torch exact (flat) or clustered IVF on CUDA, faiss on CPU; "
                        + "; ".join(f"{b.name}: {b.help}" for b in REGISTRY.values()))
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--devices", type=positive, default=1,
                   help="processes, one per GPU (NCCL) or CPU (gloo), each taking a share of the search's units "
                        "(row chunks, or IVF lists); the files are identical to a one-device run; under torchrun "
                        "the launcher's ranks are used instead")
    p.add_argument("--mass-curve", type=positive, metavar="ROWS",
                   help="only print the mass kept by K tokens, for K = 8 ... k, on ROWS (>= 1) sampled rows; "
                        "writes nothing")
    args_index(p)


def _on_devices(build: Callable[..., dict | None], kind: str, out: Path, devices: int, device: str,
                **kwargs) -> dict | None:
    """A rank-sharded stage on this process, ``--devices`` processes or the ranks torchrun started; its manifest
    (None on ranks other than 0, which print nothing)."""
    from mlpmem_lightning.core.artifacts import read_manifest
    from mlpmem_lightning.core.distributed import launched_externally, run_on_ranks

    result = run_on_ranks(build, devices, device, out=str(out), **kwargs)
    if launched_externally() and result is None:
        return None
    return read_manifest(out, kind)


def target_settings(args: argparse.Namespace):
    """The ``TargetSettings`` of ``mlpmem targets``'s flags (their defaults are the dataclass's)."""
    from mlpmem_lightning.knn.settings import TargetSettings

    return TargetSettings(index=args.index, k=args.k, temperature=args.temperature, keep=args.keep,
                          nprobe=args.nprobe, rerank=args.rerank, chunk=args.chunk, nlist=args.nlist, m=args.m,
                          nbits=args.nbits, train_size=args.train_size, backend=args.backend)


def cmd_targets(args: argparse.Namespace) -> None:
    from mlpmem_lightning.knn.targets import KIND, build_targets

    settings = target_settings(args)
    if args.mass_curve is not None:  # never 0: refused at parse time, so it cannot fall through to a build
        from mlpmem_lightning.knn.targets import mass_curve

        curve = mass_curve(args.datastore, settings, args.mass_curve, device=args.device)
        print("K\tmean mass kept\trows keeping >= 99%")
        for K, v in curve.items():
            print(f"{K}\t{v['mean']:.4f}\t{v['rows_ge_99']:.3f}")
        return
    m = _on_devices(build_targets, KIND, args.out, args.devices, args.device, datastore=str(args.datastore),
                    settings=settings)
    if m is None:
        return
    print(f"targets {args.out}: {m['N']:,} rows, K={m['K']}, mass kept mean {m['mass_kept_mean']:.4f} "
          f"min {m['mass_kept_min']:.4f}")




COMMANDS = (
    Command("prepare", "corpus -> tokenizer -> token store", args_prepare, cmd_prepare),
    Command("sizes", "print the size ladder with parameters and FLOPs per token", args_sizes, cmd_sizes),
    Command("datastore", "decoder + token store -> kNN datastore (keys, values, optional index)", args_datastore,
            cmd_datastore),
    Command("targets", "datastore -> sparse kNN target distributions (ids.npy, probs.npy)", args_targets,
            cmd_targets),
)
