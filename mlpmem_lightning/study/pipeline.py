"""One trial of a study: decoder -> datastore -> targets -> memory -> evaluation of all three.

Every stage goes through the same commands a user runs (LightningCLI for fit/validate/test,
the datastore and targets builders), into directories keyed by what they depend on, so a
second trial with the same decoder reuses its checkpoint, datastore and targets, and a
re-run after a crash resumes each stage.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlpmem_lightning import __version__
from mlpmem_lightning.core.resources import experiments_dir
from mlpmem_lightning.data.token_store import PrepareSettings, TokenStore, prepare
from mlpmem_lightning.models.flops import datastore_flops, decoder_train_flops, memory_train_flops, search_flops
from mlpmem_lightning.models.ladder import forward_flops_per_token, get_size, total_params

EXPERIMENTS = experiments_dir()


def prepare_tokens(spec) -> Path:
    store = Path(spec.token_store or spec.out_dir / "tokens")
    prepare(PrepareSettings(corpus=spec.corpus, **spec.prepare), store)
    return store


def _cli(args: list[str]):
    from mlpmem_lightning.cli.lightning import run_cli

    return run_cli(args)


@contextmanager
def _timed(times: dict[str, float], stage: str) -> Iterator[None]:
    """Wall seconds of a stage, recorded as the trial attribute ``time_<stage>_s``."""
    start = time.perf_counter()
    yield
    times[f"time_{stage}_s"] = round(time.perf_counter() - start, 2)


def _common(spec, store: Path, run_dir: Path, seed: int) -> list[str]:
    args = ["--data.num_workers", str(spec.num_workers),
            *(["--data.eval_batch_size", str(spec.eval_batch_size)] if spec.eval_batch_size else []),
            "--config", str(EXPERIMENTS / "trainer" / f"{spec.trainer}.yaml"), "--data.token_store", str(store),
            "--data.seq_len", str(spec.seq_len), "--data.batch_size", str(spec.batch_size),
            "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false",
            "--seed_everything", str(seed)]
    return args + (["--trainer.callbacks+=mlpmem_lightning.study.sweep.OptunaPruning"] if spec.prune else [])


def _metrics(cli) -> dict[str, float]:
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def _evaluate(model_args: list[str], lambda_fixed: float | None, ckpt: Path | None = None) -> tuple[dict, dict]:
    """Validate over the λ grid, pick λ there (unless fixed), test at that λ."""
    extra = ["--ckpt_path", str(ckpt)] if ckpt else []
    valid = _metrics(_cli(["validate", *model_args, *extra]))
    lam = lambda_fixed if lambda_fixed is not None else valid["val/best_lambda"]
    test = _metrics(_cli(["test", *model_args, *extra, "--model.lambda_", str(lam)]))
    return valid, test


def run_pipeline(spec, decoder_size: str, memory_size: str, seed: int) -> tuple[list[dict], dict[str, Any]]:
    """Rows of the results table for this trial, and its attributes (sizes, tokens, FLOPs per stage)."""
    from mlpmem_lightning.knn.datastore import Datastore, DatastoreSettings, build_datastore
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets, default_nlist
    from mlpmem_lightning.models.loading import load_decoder
    from mlpmem_lightning.models.memory import memory_config, memory_flops_per_token, memory_params

    out, store = spec.out_dir, prepare_tokens(spec)
    token_store = TokenStore(store)
    vocab, dec, L = token_store.vocab_size, get_size(decoder_size), spec.seq_len
    tag, times = f"{decoder_size}-seed{seed}", {}
    run = out / "decoders" / tag
    with _timed(times, "decoder_fit"):
        _cli(["fit", "--config", str(EXPERIMENTS / "model" / f"decoder_{decoder_size}.yaml"),
              *_common(spec, store, run, seed), "--model.max_tokens", str(spec.decoder_tokens)])
    ds_dir, tg_dir = out / "datastores" / tag, out / "targets" / tag
    with _timed(times, "datastore"):
        build_datastore(run, store, ds_dir, DatastoreSettings(seq_len=L, **spec.datastore))
    knn = TargetSettings(**{**spec.knn, "backend": spec.knn_backend})
    with _timed(times, "targets"):
        targets_manifest = build_targets(ds_dir, tg_dir, knn)
    ds = Datastore(ds_dir)
    n_rows, decoder_fp = len(ds), ds.manifest["decoder_fingerprint"]

    knn_args = ["--model", "KNNLM", "--model.decoder", str(run), "--model.datastore", str(ds_dir),
                "--model.index", spec.knn_eval_index or knn.index, "--model.k", str(knn.k),
                "--model.temperature", str(knn.temperature), "--model.nprobe", str(knn.nprobe),
                "--model.backend", spec.knn_backend, *(["--model.nlist", str(knn.nlist)] if knn.nlist else []),
                *_common(spec, store, out / "knnlm" / tag, seed)]
    with _timed(times, "knn_lm_eval"):
        knn_valid, knn_test = _evaluate(knn_args, spec.lambda_)

    mem_run = out / "memories" / f"{memory_size}-on-{tag}"
    mem_args = ["--model", "MemoryLM", "--model.decoder", str(run), "--model.size", memory_size,
                "--model.alpha", str(spec.alpha), "--model.mode", spec.memory_mode,
                "--data.targets", str(tg_dir), *_common(spec, store, mem_run, seed)]
    with _timed(times, "memory_fit"):
        _cli(["fit", *mem_args, "--model.max_tokens", str(spec.memory_tokens)])
    with _timed(times, "memory_eval"):
        mem_valid, mem_test = _evaluate(mem_args, spec.lambda_, mem_run / "checkpoints" / "best.ckpt")
    if spec.cleanup:  # the datastore and targets are rebuilt from the checkpoint if ever needed again
        shutil.rmtree(ds_dir)
        shutil.rmtree(tg_dir)

    step = spec.batch_size * L
    dec_tokens = math.ceil(spec.decoder_tokens / step) * step
    mem_tokens = math.ceil(spec.memory_tokens / step) * step
    mcfg = memory_config(memory_size, dec.d_model, vocab)
    nlist = knn.nlist or default_nlist(n_rows)
    family = load_decoder(run).family  # FLOPs and parameters are those of the family it was trained as
    flops = {
        "flops_decoder_train": decoder_train_flops(dec, vocab, L, dec_tokens, family=family),
        "flops_datastore": datastore_flops(dec, vocab, L, n_rows, family=family),
        "flops_search": search_flops(n_rows, n_rows, dec.d_model, knn.index, nlist, knn.nprobe),
        "flops_memory_train": memory_train_flops(
            memory_flops_per_token(mcfg, train=True), mem_tokens,
            forward_flops_per_token(dec, vocab, L, family) if spec.memory_mode == "online" else 0),
    }
    p_dec, p_mem = total_params(dec, vocab, family), memory_params(mcfg)
    base = {"study": spec.study, "decoder_size": decoder_size, "params_decoder": p_dec, "seed": seed,
            "datastore_rows": n_rows,  # provenance: what the row was computed from (checked by `report`)
            "token_store_fingerprint": token_store.fingerprint, "decoder_fingerprint": decoder_fp,
            "targets_fingerprint": targets_manifest["fingerprint"], "mlpmem_version": __version__}
    arch = {
        "decoder": {"memory_size": "", "params_memory": 0, "params_total": p_dec, "train_tokens": dec_tokens,
                    "flops_train_total": flops["flops_decoder_train"]},
        "knn_lm": {"memory_size": "", "params_memory": 0, "params_total": p_dec, "train_tokens": dec_tokens,
                   "flops_train_total": flops["flops_decoder_train"] + flops["flops_datastore"]},
        "mlp_memory": {"memory_size": memory_size, "params_memory": p_mem, "params_total": p_dec + p_mem,
                       "train_tokens": dec_tokens + mem_tokens, "flops_train_total": sum(flops.values())},
    }
    rows = []
    for split, knn_m, mem_m, pre in (("valid", knn_valid, mem_valid, "val"), ("test", knn_test, mem_test, "test")):
        def grid(m: dict[str, float]) -> dict[str, float]:
            return {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(f"{pre}/ppl_lambda_")}

        dec_loss = math.log(knn_m[f"{pre}/decoder_ppl"])
        for name, loss, lam, extra in (("decoder", dec_loss, 0.0, {}),
                                       ("knn_lm", knn_m[f"{pre}/loss"], knn_m[f"{pre}/lambda"], grid(knn_m)),
                                       ("mlp_memory", mem_m[f"{pre}/loss"], mem_m[f"{pre}/lambda"], grid(mem_m))):
            rows.append({**base, **arch[name], "arch": name, "lambda": lam, "split": split, "loss": loss,
                         "ppl": math.exp(loss), **(extra if split == "valid" else {})})
    attrs = {**flops, "params_decoder": p_dec, "params_memory": p_mem, "decoder_tokens": dec_tokens,
             "memory_tokens": mem_tokens, "datastore_rows": n_rows, **times,
             "targets_mass_kept_mean": targets_manifest["mass_kept_mean"],
             **{f"{r['arch']}_{r['split']}_ppl": r["ppl"] for r in rows}}
    return rows, attrs
