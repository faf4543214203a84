"""`mlpmem collect RUN_OR_DIR… --out results.csv`: the results table from runs made by hand with fit/validate/test.

A run is a directory with a ``test/`` run of ``mlpmem test`` in it (``--trainer.default_root_dir RUN``): a
decoder (``DecoderLM``), a kNN-LM (``KNNLM``) or a decoder + memory (``MemoryLM``). Each gives the rows the
sweep writes for that architecture (DESIGN.md "Results table"), read from what the runs saved:

* sizes, seed, token budgets from the ``config.yaml`` of the fits (the decoder's run, the memory's run);
* parameters and training FLOPs counted as the sweep counts them (decoder fit, datastore pass, the search for
  the targets, the memory's own training), from the decoder's checkpoint, the datastore and targets manifests;
* valid: ``validate/metrics.csv`` (its λ grid included); test: the loss at the λ taken on valid -- the test
  run's own headline when it ran at that λ, else its ``test/ppl_lambda_*`` point there. A λ run with no
  validation counts only when its test fixed λ (``--model.lambda_``); a λ picked on test is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mlpmem_lightning import __version__
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import collect_pretrained
from mlpmem_lightning.study.results import write_results

GRID = "ppl_lambda_"


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories named or found under ``paths`` (a run holds ``test/metrics.csv``)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"collect: {path} does not exist: pass run directories (--trainer.default_root_dir of "
                            "fit/validate/test) or folders holding them")
        found = [path] if _is_run(path) else sorted(p.parent.parent for p in path.rglob("test/metrics.csv")
                                                    if _is_run(p.parent.parent))
        if not found:
            raise UserError(f"collect: no run under {path} has a test run (test/metrics.csv): run `mlpmem test "
                            "… --trainer.default_root_dir RUN` first")
        runs += [r for r in found if r not in runs]
    return runs


def _is_run(path: Path) -> bool:
    return (path / "test" / "metrics.csv").is_file() and (path / "test" / "config.yaml").is_file()


def _config(path: Path) -> dict[str, Any]:
    cfg = yaml.safe_load(path.read_text()) or {}
    return cfg.get(cfg.get("subcommand"), cfg) if "subcommand" in cfg else cfg


def _last(path: Path) -> dict[str, float]:
    """The last logged value of every column of a Lightning ``metrics.csv``."""
    df = pd.read_csv(path)
    return {c: float(df[c].dropna().iloc[-1]) for c in df.columns if df[c].notna().any()}


def _fit_dir(path: str | Path) -> Path:
    """A fit's run directory from a run directory or one of its checkpoints."""
    path = Path(path)
    return path.parent.parent if path.is_file() else path


def _tokens(fit: dict[str, Any]) -> int:
    """Tokens a fit trained on: its budget (or max_steps) in whole steps of batch_size x seq_len."""
    step = fit["data"]["batch_size"] * fit["data"]["seq_len"]
    budget = fit["model"]["init_args"].get("max_tokens")
    return math.ceil(budget / step) * step if budget else int(fit["trainer"]["max_steps"]) * step


def _arch(module: str, run: Path):
    """The architecture a run is: by its LightningModule, and a MemoryLM trained at α = 0 without targets is the
    CE-only control (``mlp_memory_ce``), which the sweep runs beside the memory and charges no search."""
    from mlpmem_lightning.study import architectures

    if module == "MemoryLM" and _is_ce_only(run):
        return architectures.get("mlp_memory_ce")
    for arch in architectures.registered():
        if arch.module == module:
            return arch
    raise UserError(f"collect: no architecture of the study runs {module}: collect DecoderLM, KNNLM or MemoryLM runs")


def run_rows(run: Path, study: str) -> list[dict[str, Any]]:
    """The results rows of one hand-made run (valid when it was validated, and test)."""
    test_cfg = _config(run / "test" / "config.yaml")
    module = test_cfg["model"]["class_path"].rsplit(".", 1)[-1]
    arch = _arch(module, run)
    init = test_cfg["model"].get("init_args") or {}
    scores = _scores(run, arch, test_cfg)  # before the accounting: a λ picked on test is refused first
    pretrained = collect_pretrained.base_dir(module, init, test_cfg)  # an imported base: no fit, no rung
    if pretrained is not None:
        accounted = collect_pretrained.account(arch.name, pretrained, test_cfg, _run_files(arch.name, run, test_cfg))
    else:
        decoder_run = _fit_dir(init["decoder"]) if module != "DecoderLM" else \
            _fit_dir(test_cfg.get("ckpt_path") or run)
        accounted = _account(arch.name, decoder_run, run, test_cfg)
    base = {"study": study, "trial": None, "arch": arch.name, "run": str(run), "mlpmem_version": __version__,
            **accounted}
    return [{**base, **split} for split in scores]


def _run_files(arch: str, run: Path, test_cfg: dict[str, Any]) -> dict[str, Any]:
    """What a run's files say beyond its test config: the datastore it searched or learned from, the kNN-LM's T,
    and a memory's fit config, tokens and targets manifest (for :mod:`.collect_pretrained`'s accounting)."""
    if arch == "decoder":
        return {}
    if arch == "knn_lm":
        return {"datastore": Path(test_cfg["model"]["init_args"]["datastore"]),
                "temperature": _knn_temperature(run, test_cfg)}
    fit = _config(run / "config.yaml")
    if arch == "mlp_memory_ce":  # no targets, no datastore
        return {"fit": fit, "tokens": _tokens(fit), "targets": None}
    targets = _targets_manifest(run)
    return {"datastore": Path(targets["datastore"]), "fit": fit, "tokens": _tokens(fit), "targets": targets}


def _scores(run: Path, arch, test_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    test = _last(run / "test" / "metrics.csv")
    valid_path = run / "validate" / "metrics.csv"
    valid = _last(valid_path) if valid_path.is_file() else None
    rows = []
    if arch.weighs is None:  # no λ: the decoder
        if valid:
            rows.append({"split": "valid", "lambda": 0.0, "loss": valid["val/loss"]})
        return rows + [{"split": "test", "lambda": 0.0, "loss": test["test/loss"]}]
    fixed = (test_cfg["model"].get("init_args") or {}).get("lambda_")
    if valid:
        lam = valid["val/lambda"]
        grid = {k.split("/", 1)[1]: v for k, v in valid.items() if k.startswith(f"val/{GRID}")}
        rows.append({"split": "valid", "lambda": lam, "loss": valid["val/loss"], **grid})
    elif fixed is not None:
        lam = float(fixed)
    else:
        raise UserError(f"collect: {run} has no validate run and its test picked λ on test: run `mlpmem validate` "
                        "with the same --trainer.default_root_dir (or test with --model.lambda_ from validation)")
    test_grid = {k.split("/", 1)[1]: v for k, v in test.items() if k.startswith(f"test/{GRID}")}  # as the sweep's
    return rows + [{"split": "test", "lambda": round(lam, 6), "loss": _loss_at(test, lam, run), **test_grid}]


def _loss_at(test: dict[str, float], lam: float, run: Path) -> float:
    """The test loss at λ: the test's headline if it ran at λ, else its λ-grid point there."""
    if abs(test["test/lambda"] - lam) < 1e-6:
        return test["test/loss"]
    key = f"test/{GRID}{lam:.2f}"
    if key not in test:
        raise UserError(f"collect: the test of {run} has no λ {lam:.2f} on its grid: run `mlpmem test` again with "
                        f"--model.lambda_ {lam:.2f}")
    return math.log(test[key])


def _account(arch: str, decoder_run: Path, run: Path, test_cfg: dict[str, Any]) -> dict[str, Any]:
    """Sizes, parameters, tokens and training FLOPs, counted as the sweep's architectures count them."""
    from mlpmem_lightning.data.token_store import TokenStore
    from mlpmem_lightning.knn.datastore import Datastore
    from mlpmem_lightning.lightning.convergence import read_summary
    from mlpmem_lightning.models.flops import datastore_flops, decoder_train_flops
    from mlpmem_lightning.models.ladder import get_size, non_embedding_params, total_params
    from mlpmem_lightning.models.loading import load_decoder
    from mlpmem_lightning.study.decoders import peak_lr

    fit = _config(decoder_run / "config.yaml")
    size, seq_len = fit["model"]["init_args"]["size"], fit["data"]["seq_len"]
    store = TokenStore(fit["data"]["token_store"])
    decoder, rung, vocab = load_decoder(decoder_run), get_size(size), store.vocab_size
    params = total_params(rung, vocab, decoder.family)
    tokens = _tokens(fit)
    flops = decoder_train_flops(rung, vocab, seq_len, tokens, family=decoder.family)
    out = {"decoder_size": size, "memory_size": "", "params_decoder": params, "params_memory": 0,
           "seed": int(fit.get("seed_everything") or 0), "token_store_fingerprint": store.fingerprint,
           "decoder_fingerprint": decoder.fingerprint}
    if arch in ("knn_lm", "mlp_memory"):
        datastore = Path(test_cfg["model"]["init_args"]["datastore"]) if arch == "knn_lm" else \
            Path(_targets_manifest(run)["datastore"])
        rows = len(Datastore(datastore))
        flops += datastore_flops(rung, vocab, Datastore(datastore).manifest["seq_len"], rows, family=decoder.family)
        out["datastore_rows"] = rows
    non_embedding = non_embedding_params(rung, decoder.family)
    if arch == "knn_lm":
        out["temperature"] = _knn_temperature(run, test_cfg)
    if arch in ("mlp_memory", "mlp_memory_ce"):
        memory = _memory(run, rung, vocab, decoder.family, rows if arch == "mlp_memory" else None)
        flops += memory.pop("flops")
        tokens += memory.pop("tokens")
        non_embedding += memory.pop("non_embedding")
        out.update(memory, params_memory=memory["params_memory"])
    conv = read_summary(decoder_run)  # the columns the sweep's rows carry (study/columns.py, Stages.recipe)
    return {**out, "params_total": params + out["params_memory"], "train_tokens": tokens, "flops_train_total": flops,
            "params_non_embedding": non_embedding, "lr": peak_lr(fit["model"]["init_args"], rung),
            "epochs": tokens / len(store.split("train")), "last10_improvement": conv.get("last10_improvement"),
            "converged": conv.get("converged")}


def _knn_temperature(run: Path, test_cfg: dict[str, Any]) -> float | None:
    """The T the kNN-LM's test ran at: the one validation chose (``val/temperature``), else the one it was given."""
    valid = run / "validate" / "metrics.csv"
    if valid.is_file() and "val/temperature" in (last := _last(valid)):
        return last["val/temperature"]
    init = test_cfg["model"].get("init_args") or {}
    given = init.get("temperatures") or [init.get("temperature")]
    return None if given[0] is None else float(given[0])


def _is_ce_only(run: Path) -> bool:
    fit = _config(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    init = (fit.get("model") or {}).get("init_args") or {}
    return float(init.get("alpha", 0.5)) == 0.0 and not (fit.get("data") or {}).get("targets")


def _targets_manifest(run: Path) -> dict[str, Any]:
    import json

    targets = _config(run / "config.yaml")["data"]["targets"]
    return {**json.loads((Path(targets) / "manifest.json").read_text()), "path": targets}


def _memory(run: Path, rung, vocab: int, family: str, rows: int | None) -> dict[str, Any]:
    """The memory fit's size, parameters, tokens and FLOPs (the search for its targets over ``rows`` datastore rows,
    its own training); ``rows`` None: the CE-only control, which has no targets and searched nothing."""
    from mlpmem_lightning.models.families import get_family
    from mlpmem_lightning.models.flops import memory_train_flops
    from mlpmem_lightning.models.ladder import forward_flops_per_token, matched_memory
    from mlpmem_lightning.models.memory import memory_config, memory_flops_per_token
    from mlpmem_lightning.study.columns import memory_columns

    fit = _config(run / "config.yaml")
    init = fit["model"]["init_args"]
    size = init.get("size") or matched_memory(rung.name).name  # MemoryLM's default when --model.size is left out
    cfg = memory_config(size, rung.d_model, vocab, init.get("block") or get_family(family).memory_block)
    tokens = _tokens(fit)
    forward = forward_flops_per_token(rung, vocab, fit["data"]["seq_len"], family) if init.get("mode") == "online" \
        else 0
    own = memory_train_flops(memory_flops_per_token(cfg, train=True), tokens, forward)
    targets = _targets_manifest(run) if rows is not None else None
    return memory_columns(size, cfg, tokens, own, targets, rows, rung.d_model)


def collect(paths: Iterable[str | Path], out: str | Path, study: str = "collected") -> pd.DataFrame:
    """Write the results table of the runs under ``paths`` to ``out``; the rows written."""
    rows = []
    for run in find_runs(paths):
        rows += run_rows(run, study)
    for row in rows:
        row["ppl"] = math.exp(row["loss"])
    return write_results(rows, out)
