"""`mlpmem demo`: a small study on the embedded corpus, on CPU.

Current scope (issue #2): prepare ``wiki-summaries``, fit decoders of a few ladder
sizes through the same LightningCLI path a user runs, evaluate each best checkpoint
on valid and test, and write ``results.csv`` (decoder rows only). The kNN-LM, the MLP
Memory and the report join as their issues land. Every step reuses finished
artifacts, so re-running the demo after an interruption continues it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from .results import write_results
from .sizes import flops_per_token, get_size, total_params
from .token_store import PrepareSettings, prepare

log = logging.getLogger(__name__)
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
CORPUS = "wiki-summaries"
SEQ_LEN, BATCH = 128, 16


def _lightning_args(cmd: str, size: str, tokens: Path, run_dir: Path, max_tokens: int) -> list[str]:
    return [cmd, "--config", str(EXPERIMENTS / "trainer" / "cpu.yaml"),
            "--config", str(EXPERIMENTS / "model" / f"decoder_{size}.yaml"),
            "--data.token_store", str(tokens), "--data.seq_len", str(SEQ_LEN), "--data.batch_size", str(BATCH),
            "--model.max_tokens", str(max_tokens), "--trainer.default_root_dir", str(run_dir),
            "--trainer.enable_progress_bar", "false"]


def fit_and_evaluate(size: str, tokens: Path, run_dir: Path, max_tokens: int) -> dict[str, float]:
    """Fit (or resume, or reuse) one decoder; valid and test loss of its best checkpoint."""
    from .lightning_cli import run_cli

    run_cli(_lightning_args("fit", size, tokens, run_dir, max_tokens))
    best = run_dir / "checkpoints" / "best.ckpt"
    metrics = {}
    for cmd, split in (("validate", "val"), ("test", "test")):
        cli = run_cli(_lightning_args(cmd, size, tokens, run_dir, max_tokens) + ["--ckpt_path", str(best)])
        metrics[split] = float(cli.trainer.callback_metrics[f"{split}/loss"])
    return metrics


def run_demo(out: Path, sizes: list[str], max_tokens: int) -> Path:
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    tokens = out / "tokens"
    manifest = prepare(PrepareSettings(corpus=CORPUS), tokens)
    vocab, rows = manifest["vocab_size"], []
    for trial, size in enumerate(sizes):
        ladder = get_size(size)
        metrics = fit_and_evaluate(size, tokens, out / "decoders" / size, max_tokens)
        params = total_params(ladder, vocab)
        train_tokens = math.ceil(max_tokens / (SEQ_LEN * BATCH)) * SEQ_LEN * BATCH  # whole steps
        flops = train_tokens * flops_per_token(ladder, vocab, SEQ_LEN)
        for split, key in (("valid", "val"), ("test", "test")):
            loss = metrics[key]
            rows.append({"study": "demo", "trial": trial, "arch": "decoder", "decoder_size": size, "memory_size": "",
                         "params_decoder": params, "params_memory": 0, "params_total": params,
                         "train_tokens": train_tokens, "flops_train_total": flops, "lambda": 0.0, "split": split,
                         "loss": loss, "ppl": math.exp(loss), "seed": 0})
    df = write_results(rows, out / "results.csv")
    print(df[["arch", "decoder_size", "params_total", "split", "loss", "ppl"]].to_string(index=False))
    print(f"demo finished in {time.time() - start:.0f} s: results in {out / 'results.csv'}")
    return out / "results.csv"

