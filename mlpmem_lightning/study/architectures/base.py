"""What an architecture of a study is, and the λ-grid evaluation most of them share.

An :class:`Architecture` says how it appears in the results and the report (name, label, colour,
marker), which LightningModule runs it, which shared stages of the trial it is built on (``needs``:
decoder fit, datastore, targets), how it trains what is its own (``fit``), how it is scored on valid
and test (``evaluate``) and what it cost (``account``). The pipeline, results, analysis, report and the
sweep objective loop over the registry (``mlpmem_lightning.study.architectures``), never over names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpmem_lightning.study.spec import SweepSpec
from mlpmem_lightning.study.stages import Stages

SPLITS = ("valid", "test")


@dataclass(frozen=True)
class Score:
    """One split's result at the λ chosen on valid (0 for an architecture that mixes nothing in)."""

    loss: float
    lambda_: float = 0.0
    grid: dict[str, float] = field(default_factory=dict)  # ppl per λ (``ppl_lambda_*``): λ curves, per-run table
    temperature: float | None = None  # the kNN T it used (kNN-LM: chosen on valid; memory: its targets'); None: none


@dataclass(frozen=True)
class Own:
    """What an architecture trained besides the shared stages it is built on (nothing, for the decoder)."""

    memory_size: str = ""
    params: int = 0
    tokens: int = 0
    flops: int = 0
    non_embedding: int = 0  # its non-embedding parameters (the memory's: everything but the vocabulary head)


@dataclass(frozen=True)
class Architecture:
    """One architecture of a study; subclasses implement ``evaluate`` and, if they train anything, ``fit``."""

    name: str  # the results.csv ``arch`` value
    label: str  # how reports name it
    colour: str  # matplotlib colour of its points and fits
    marker: str  # matplotlib marker of its points
    module: str  # the LightningModule class name (``mlpmem fit|validate|test --model``)
    needs: tuple[str, ...] = ("decoder",)  # shared stages it is built on (stages.SHARED)
    baseline: bool = False  # every other architecture is compared with this one (exactly one)
    weighs: str | None = None  # what λ weighs against the decoder ("kNN distribution"); None: no λ
    imitates: str | None = None  # the architecture it is trained to imitate: compared with it on the same decoder
    short: str = ""  # a short name for files (default: ``name``)

    def runs_at(self, spec: SweepSpec, decoder_size: str) -> bool:
        """Whether a trial of this decoder size runs it (every size, unless an architecture says otherwise)."""
        return True

    def fit(self, stages: Stages) -> Own:
        """Train what is the architecture's own (the shared stages have run); record its attributes."""
        return Own()

    def evaluate(self, stages: Stages) -> dict[str, Score]:
        """``{"valid": Score, "test": Score}``, with any λ chosen on valid and test scored at it."""
        raise NotImplementedError

    def account(self, stages: Stages, own: Own) -> dict[str, Any]:
        """Parameters, tokens and FLOPs of everything spent to produce it: the shared stages it is built on
        (decoder training, datastore pass, search for the targets) and its own training."""
        from mlpmem_lightning.study.columns import row_columns

        tokens = stages.decoder_tokens + own.tokens
        return {"memory_size": own.memory_size, "params_memory": own.params,
                "params_total": stages.params_decoder + own.params, "train_tokens": tokens,
                "flops_train_total": stages.shared_flops(self.needs) + own.flops,
                **row_columns(stages, own.non_embedding, tokens)}


def lambda_grid_scores(stages: Stages, model: dict[str, Any], root: Path, data: dict[str, Any] | None = None,
                       ckpt: Path | None = None) -> dict[str, Score]:
    """Validate over the λ grid, take λ there (unless the spec fixes it), test at that λ.

    For the modules that log the λ grid (``KNNLM``, ``MemoryLM``: ``val/best_lambda``, ``val/ppl_lambda_*``).
    """
    valid = stages.run("validate", model, root, data, ckpt)
    # val/best_lambda is logged in float32 (0.44999998...): test at the grid point itself, which lambda_ must be
    lam = stages.spec.lambda_ if stages.spec.lambda_ is not None else round(valid["val/best_lambda"], 6)
    at_lambda = {**model, "init_args": {**model.get("init_args", {}), "lambda_": lam}}
    test = stages.run("test", at_lambda, root, data, ckpt)
    # the test pass evaluates the whole grid too: kept so the report can show test perplexity at λ = 0.25 and at
    # λ = 1 (the mixed-in component alone) beside λ*, never to choose λ
    return {split: Score(m[f"{p}/loss"], m[f"{p}/lambda"],
                         {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(f"{p}/ppl_lambda_")})
            for split, p, m in (("valid", "val", valid), ("test", "test", test))}
