"""`mlpmem collect` over runs whose decoder is a pretrained directory (`mlpmem import-decoder`), not a fit.

A pretrained base (SmolLM2-135M, issue #17) has no ladder rung and no fit config: its rows are counted from the
directory's manifest and weights instead. The base alone is a ``mlpmem test --model DecoderLM --model.init_from
DIR`` run (no checkpoint). ``decoder_size`` is the directory's name (one base per study: what
:func:`~.analysis.memory_scaling.memory_scaling` groups by). ``flops_train_total`` counts what this study spent
on top of the base: its pretraining is not known here and counts 0, the datastore pass, the search for the
targets and the memory's own training (with a base forward per token in online mode) as the sweep counts them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from mlpmem_lightning.study.decoders import PretrainedBase, is_pretrained


def base_dir(module: str, init: dict[str, Any], test_cfg: dict[str, Any]) -> Path | None:
    """The pretrained directory a test run evaluates (its ``--model.decoder``, or a DecoderLM's ``init_from`` when
    no checkpoint was tested), or None when the decoder is a fit."""
    if module == "DecoderLM":
        path = init.get("init_from") if not test_cfg.get("ckpt_path") else None
    else:
        path = init.get("decoder")
    return Path(path) if path and is_pretrained(path) else None


@lru_cache(maxsize=2)
def _base(path: str) -> PretrainedBase:
    """The base, counted as a sweep on it counts it (:class:`.decoders.PretrainedBase`), loaded once per collect."""
    return PretrainedBase(Path(path))


def account(arch: str, base: Path, test_cfg: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """The accounting columns of one run on a pretrained base (those :func:`collect._account` gives a fit's run);
    ``files``: what :func:`collect._run_files` read from the run (datastore, T, the memory's fit and targets)."""
    from mlpmem_lightning.data.token_store import TokenStore
    from mlpmem_lightning.knn.datastore import Datastore

    source = _base(str(base))
    family = source.loaded.family
    params, non_embedding = source.params_total(source.vocab, family), source.non_embedding(family)
    store = TokenStore(test_cfg["data"]["token_store"])
    out = {"decoder_size": base.name, "memory_size": "", "params_decoder": params, "params_memory": 0,
           "seed": int(test_cfg.get("seed_everything") or 0),
           "token_store_fingerprint": store.fingerprint, "decoder_fingerprint": source.loaded.fingerprint}
    flops, tokens, rows = 0, 0, None  # the base's pretraining: not known here, not this study's
    if arch in ("knn_lm", "mlp_memory"):
        datastore = Datastore(files["datastore"])
        rows = len(datastore)
        flops += rows * source.forward_flops(source.vocab, datastore.manifest["seq_len"], family)
        out["datastore_rows"] = rows
    if arch == "knn_lm":
        out["temperature"] = files["temperature"]
    if arch in ("mlp_memory", "mlp_memory_ce"):
        memory = _memory(files, str(base), rows)
        flops += memory.pop("flops")
        tokens += memory.pop("tokens")
        non_embedding += memory.pop("non_embedding")
        out.update(memory)
    return {**out, "params_total": params + out["params_memory"], "train_tokens": tokens, "flops_train_total": flops,
            "params_non_embedding": non_embedding, "lr": None, "epochs": tokens / len(store.split("train")),
            "last10_improvement": None, "converged": None}


def _memory(files: dict[str, Any], base: str, rows: int | None) -> dict[str, Any]:
    """The memory's size, parameters, tokens and FLOPs (its targets' search over ``rows`` datastore rows and its own
    training) on the base; the CE-only control (no targets, ``rows`` None) searched nothing."""
    from mlpmem_lightning.models.families import get_family
    from mlpmem_lightning.models.flops import memory_train_flops
    from mlpmem_lightning.models.memory import memory_flops_per_token
    from mlpmem_lightning.study.columns import memory_columns

    source = _base(base)
    family = source.loaded.family
    fit, tokens = files["fit"], files["tokens"]
    init = fit["model"]["init_args"]
    size, block = init.get("size"), init.get("block") or get_family(family).memory_block
    cfg = source.memory_config(size, source.vocab, family, block)
    forward = source.forward_flops(source.vocab, fit["data"]["seq_len"], family) \
        if init.get("mode", "online") == "online" else 0
    own = memory_train_flops(memory_flops_per_token(cfg, train=True), tokens, forward)
    return memory_columns(size, cfg, tokens, own, files["targets"], rows, source.d_model)
