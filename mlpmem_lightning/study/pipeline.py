"""One trial of a study: the shared stages its architectures need, then each architecture's fit and evaluation.

For (decoder size, memory size, seed): fit the decoder -> datastore -> targets (each only if a selected
architecture needs it; see :mod:`.stages`), then every selected architecture in registry order trains
what is its own and is scored on valid and test, and becomes two rows of the results table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.token_store import PrepareSettings, prepare
from mlpmem_lightning.study import architectures, locks
from mlpmem_lightning.study.architectures import Architecture
from mlpmem_lightning.study.architectures.base import SPLITS
from mlpmem_lightning.study.spec import SweepSpec
from mlpmem_lightning.study.stages import Stages

if TYPE_CHECKING:  # importing lightning (torch) is for the stages that run, not for reading the registry
    from lightning.pytorch import Callback


def prepare_tokens(spec: SweepSpec) -> Path:
    """Build (or reuse) the study's token store; a worker waits while another worker of ``out`` builds it. On a
    pretrained base the corpus is tokenized with the base's own tokenizer unless ``prepare`` names one."""
    store = Path(spec.token_store or spec.out_dir / "tokens")
    settings = {**({"tokenizer": spec.base} if spec.base else {}), **spec.prepare}
    with locks.waiting_for(spec.out_dir, store):
        if not (spec.base and _base_store(store, spec)):
            prepare(PrepareSettings(corpus=spec.corpus, **settings), store)
    return store


def _base_store(store: Path, spec: SweepSpec) -> bool:
    """Whether ``store`` is a finished store of the spec's corpus in the base's tokenizer, however that tokenizer
    was reached: ``prepare`` records the tokenizer's path among its settings, and the same tokenizer imported to
    another directory (SmolLM2's, carried to the GPU machine) would otherwise make the study refuse the store."""
    from mlpmem_lightning.core.artifacts import is_complete
    from mlpmem_lightning.data.token_store import TokenStore
    from mlpmem_lightning.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    if not is_complete(store):
        return False
    ts = TokenStore(store)
    recorded = ts.manifest.get("settings", {})
    asked = {"corpus": spec.corpus, **{k: v for k, v in spec.prepare.items() if k != "tokenizer"}}
    if any(recorded.get(k) != v for k, v in asked.items()):
        return False  # prepare names the difference
    ts.check_tokenizer(tokenizer_fingerprint(load_tokenizer(spec.base)), spec.base)  # one line if it differs
    return True


def select(spec: SweepSpec) -> list[Architecture]:
    """The spec's architectures in registry order (all registered ones by default); its objective among them."""
    chosen = spec.architectures if spec.architectures is not None else architectures.names()
    for name in chosen:
        architectures.get(name)  # an unknown name is a UserError naming the registered ones
    if not chosen:
        raise UserError(f"architectures is empty: list some of {', '.join(architectures.names())}")
    if spec.objective not in chosen:
        raise UserError(f"objective {spec.objective!r} is not among the study's architectures "
                        f"({', '.join(chosen)}): set objective to one of them")
    return [a for a in architectures.registered() if a.name in chosen]


def runs_at_budget(arch: Architecture, spec: SweepSpec, decoder_budget: float | None) -> bool:
    """Whether ``arch`` runs on the decoder of this budget: at the largest of ``decoder_budgets`` every architecture
    does, at a smaller one only the baseline. The smaller budgets are there for the decoder-only compute frontier
    (what "matched compute" compares with); a datastore, targets, kNN-LM and memory per budget would double the
    study's most expensive stages, and the report pairs architectures at the largest budget."""
    budgets = spec.decoder_budgets
    return decoder_budget is None or not budgets or decoder_budget == max(budgets) or arch.baseline


def run_pipeline(spec: SweepSpec, decoder_size: str, memory_size: str, seed: int, callbacks: Sequence[Callback] = (),
                 decoder_budget: float | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Rows of the results table for this trial, and its attributes (sizes, tokens, FLOPs and seconds per stage).

    ``callbacks`` are added to every fit's Trainer (the sweep's Optuna pruning).
    """
    archs = [a for a in select(spec) if a.runs_at(spec, decoder_size) and runs_at_budget(a, spec, decoder_budget)]
    stages = Stages(spec, decoder_size, memory_size, seed, prepare_tokens(spec), callbacks, decoder_budget)
    try:
        stages.run_shared([stage for a in archs for stage in a.needs])
        results = []
        for arch in archs:
            own = arch.fit(stages)
            results.append((arch, arch.account(stages, own), arch.evaluate(stages)))
        if spec.cleanup:  # the datastore and targets are rebuilt from the checkpoint if ever needed again
            stages.cleanup()
    finally:
        stages.release()
    base = {"study": spec.study, "decoder_size": decoder_size, "params_decoder": stages.params_decoder, "seed": seed,
            **stages.provenance(), **stages.recipe(),
            **({"decoder_budget": decoder_budget} if decoder_budget is not None else {})}
    rows = []
    for split in SPLITS:
        for arch, accounting, scores in results:
            s = scores[split]
            rows.append({**base, **accounting, "arch": arch.name, "lambda": s.lambda_, "temperature": s.temperature,
                         "split": split, "loss": s.loss, "ppl": math.exp(s.loss), **s.grid})
    attrs = {**stages.attrs, **stages.times, **{f"{r['arch']}_{r['split']}_ppl": r["ppl"] for r in rows}}
    return rows, attrs
