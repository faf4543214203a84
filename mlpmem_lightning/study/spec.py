"""A sweep specification (``sweeps/*.yaml``): what a study runs, checked before anything runs.

The spec is plain data. Which architectures exist is the registry's business
(:mod:`mlpmem_lightning.study.architectures`), so the ``architectures`` and ``objective`` keys are
checked against it by :func:`mlpmem_lightning.study.pipeline.select`, not here: the registry's entries
import the trial's stages, which read this spec.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.resources import experiments_dir, resolve_shipped
from mlpmem_lightning.knn.settings import TargetSettings

log = logging.getLogger(__name__)
# the artifact folders of an ``out`` (stages.py, architectures/): no study's tables may go there
RESERVED = frozenset({"tokens", "decoders", "datastores", "targets", "knnlm", "memories", "report", ".locks"})


@dataclass
class SweepSpec:
    """A sweep specification (the YAML's keys; unknown keys are refused)."""

    study: str
    decoder_sizes: list[str] | None = None  # ladder rungs (required unless base)
    # a pretrained decoder directory (`mlpmem import-decoder`) every trial uses instead of training a rung; its
    # name is the rows' decoder_size, and memory_sizes are relative to it (x0.25, x0.5 …; "matched": x1)
    base: str | None = None
    memory_sizes: list[str] | str = "matched"  # "matched": the memory rung matched to each decoder
    seeds: list[int] = field(default_factory=lambda: [0])
    extra_points: list[dict[str, Any]] = field(default_factory=list)  # more (decoder_size, memory_size, seed)
    architectures: list[str] | None = None  # registry names to run (default: every registered architecture)
    control_sizes: list[str] | None = None  # decoder sizes the CE-only control (mlp_memory_ce) runs at
    objective: str = "mlp_memory"  # the architecture whose valid loss is the trial's value
    out: str | None = None  # default runs/sweeps/<study>
    storage: str | None = None  # default sqlite:///<out>/optuna.db; "journal:PATH"; any RDB URL
    sampler: str = "grid"  # grid | random | tpe; or {name, n_trials, params} (axes.py)
    n_trials: int | None = None  # for random/tpe (grid: the whole grid)
    ranges: dict[str, dict[str, Any]] = field(default_factory=dict)  # sampled settings: the sampler's params
    corpus: str = "wiki-summaries"
    token_store: str | None = None  # default <out>/tokens
    prepare: dict[str, Any] = field(default_factory=dict)  # PrepareSettings overrides
    trainer: str = "cpu"  # experiments/trainer/<name>.yaml
    seq_len: int = 128
    batch_size: int = 16
    # a list where a number is expected sweeps that setting (decoder_lr, alpha, the budgets, knn k/keep/temperature)
    decoder_tokens: int | list[int] = 1_000_000
    # peak LR: a number, a list (swept), {from: lr.csv} (`mlpmem lr-search`), or None: the rung's shipped
    decoder_lr: float | list[float] | dict[str, str] | None = None
    decoder_budgets: list[float] | None = None  # each rung at each: tokens = b x the rule (study/budget.py)
    lr_search: dict[str, Any] = field(default_factory=dict)  # `mlpmem lr-search`: grid, max_extensions, budget
    memory_tokens: int | list[int] = 1_000_000
    memory_mode: str = "online"
    alpha: float | list[float] = 0.5
    knn: dict[str, Any] = field(default_factory=dict)  # TargetSettings overrides (index, k, temperature, backend, ...)
    knn_eval_index: str | None = None  # index for kNN-LM evaluation (default: knn.index)
    temperatures: list[float] | None = None  # kNN-LM's T grid, chosen with λ on valid (default 1/8, 1/4, ..., 1024)
    targets_temperature_scale: float | None = 0.1  # targets' T = scale x median neighbour distance (knn/temperature.py)
    # "rule": the targets' T from targets_temperature_scale; "knn_lm": the T the kNN-LM chose on valid (with λ)
    targets_temperature: str = "rule"
    lambda_: float | None = None  # YAML key "lambda": fix λ instead of choosing it on valid
    prune: bool = False
    num_workers: int = 0  # DataLoader workers per fit/evaluation
    eval_batch_size: int | None = None  # windows per evaluation batch (default batch_size; larger = fewer searches)
    datastore: dict[str, Any] = field(default_factory=dict)  # DatastoreSettings overrides (batch_size, precision)
    cleanup: bool = False  # delete each trial's datastore and targets once it is evaluated (disk-bound studies)
    stores_at_once: int | None = None  # at most this many trials hold a datastore + targets at once (disk; locks.Slots)
    store_dir: str | None = None  # where datastores and targets go (default: out); e.g. /dev/shm (memory, not the disk)
    heartbeat: int = 60  # seconds between a running trial's heartbeats (RDB storages); stale after 4 of them

    def __post_init__(self) -> None:
        if self.base and not self.decoder_sizes:
            self.decoder_sizes = [Path(self.base).name]

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> SweepSpec:
        """Read, override (``{"knn.k": 64}``: the command line's ``--set``) and check a spec."""
        path = resolve_shipped(path)  # sweeps/<name>.yaml is found without a checkout too
        if not path.is_file():
            raise UserError(f"sweep spec {path} does not exist: see sweeps/ for examples")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"sweep spec {path} is not valid YAML ({' '.join(str(err).split())}): "
                            "see sweeps/demo.yaml") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"sweep spec {path} holds a YAML {type(raw).__name__}, not a mapping of keys "
                            "(study: NAME, decoder_sizes: [...], ...): see sweeps/demo.yaml")
        for key, value in (overrides or {}).items():
            _override(raw, key, value)
        _sampler_section(raw, path)
        if "lambda" in raw:
            raw["lambda_"] = raw.pop("lambda")
        _renamed(raw, path)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"{path}: unknown keys {', '.join(unknown)}; valid keys: "
                            f"{', '.join(sorted(known - {'lambda_'}) + ['lambda'])}")
        required = ("study",) if raw.get("base") else ("study", "decoder_sizes")  # a base is the one decoder
        missing = [k for k in required if k not in raw]
        if missing:
            raise UserError(f"{path}: missing required keys {', '.join(missing)}")
        spec = cls(**raw)
        spec.validate()
        return spec

    def validate(self) -> None:
        from mlpmem_lightning.study import axes

        axes.check_ranges(self)
        scalars = axes.validate(self)  # a swept spec is checked once per swept value
        for spec in scalars or [self]:
            spec._validate_scalar()

    def _validate_scalar(self) -> None:
        from mlpmem_lightning.knn.datastore import DatastoreSettings
        from mlpmem_lightning.knn.search import choices as backend_choices
        from mlpmem_lightning.models.ladder import get_memory_size, get_size

        if not isinstance(self.study, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.study) \
                or self.study in RESERVED:
            raise UserError(f"study {self.study!r}: name it with letters, digits, '.', '_' or '-' (it names "
                            f"<out>/<study>/results.csv), not one of {', '.join(sorted(RESERVED))}")
        if isinstance(self.decoder_lr, dict):
            from mlpmem_lightning.study.lr_search import check_lr_source

            check_lr_source(self.decoder_lr)
        elif self.decoder_lr is not None and not (isinstance(self.decoder_lr, (int, float)) and self.decoder_lr > 0):
            raise UserError(f"decoder_lr {self.decoder_lr!r} must be a positive number, {{from: lr.csv}} "
                            "(`mlpmem lr-search`) or left out (each rung's)")
        if self.decoder_budgets is not None or self.lr_search:
            from mlpmem_lightning.study.lr_search import check_search_keys

            check_search_keys(self.decoder_budgets, self.lr_search)
        if self.base is not None:
            self._validate_base()
        for s in [*self.decoder_sizes, *(p.get("decoder_size", "?") for p in self.extra_points)]:
            if self.base is None:
                get_size(s)
        studied = {*self.decoder_sizes, *(p.get("decoder_size") for p in self.extra_points)}
        if self.control_sizes is not None and not set(self.control_sizes) <= studied:
            raise UserError(f"control_sizes {sorted(set(self.control_sizes) - studied)} are not decoder sizes of the "
                            "study: list them in decoder_sizes (or extra_points) too")
        if self.memory_sizes != "matched":
            from mlpmem_lightning.models.base_memory import is_relative, ratio_of

            for s in self.memory_sizes:
                ratio_of(s) if is_relative(s) else get_memory_size(s)  # x0.5: a ratio of the decoder's parameters
        if self.stores_at_once is not None and not (isinstance(self.stores_at_once, int) and self.stores_at_once >= 1):
            raise UserError(f"stores_at_once {self.stores_at_once!r} must be a whole number >= 1 "
                            "(or left out: no limit)")
        if self.sampler not in ("grid", "random", "tpe"):
            raise UserError(f"sampler {self.sampler!r}: choose grid, random or tpe")
        if not 0 <= self.alpha <= 1 or (self.lambda_ is not None and not 0 <= self.lambda_ <= 1):
            raise UserError("alpha and lambda must lie in [0, 1]")
        _check_temperatures(self.temperatures, self.targets_temperature_scale)
        if self.targets_temperature not in ("rule", "knn_lm"):
            raise UserError(f"targets_temperature {self.targets_temperature!r}: choose rule (the median-distance "
                            "rule, targets_temperature_scale) or knn_lm (the T the kNN-LM chose on valid)")
        bad = sorted(set(self.knn) - {f.name for f in fields(TargetSettings)})
        if bad:
            raise UserError(f"unknown knn keys {', '.join(bad)}: see `mlpmem targets --help`")
        if self.knn_settings.backend not in backend_choices():
            raise UserError(f"knn backend {self.knn_settings.backend!r}: choose one of {', '.join(backend_choices())}")
        bad = sorted(set(self.datastore) - {"batch_size", "precision", "layer"})
        if bad:
            raise UserError(f"unknown datastore keys {', '.join(bad)}: use batch_size, precision or layer")
        DatastoreSettings(**self.datastore)
        trainers = sorted(p.stem for p in (experiments_dir() / "trainer").glob("*.yaml"))
        if self.trainer not in trainers:
            raise UserError(f"trainer {self.trainer!r}: choose one of {', '.join(trainers)} (experiments/trainer/)")

    def _validate_base(self) -> None:
        """A study on a pretrained base: the base exists, and nothing asks to train or tune a decoder."""
        from mlpmem_lightning.study.decoders import is_pretrained

        if not is_pretrained(self.base):
            raise UserError(f"base {self.base}: not a transformers model directory (config.json, weights, tokenizer): "
                            "make one with `mlpmem import-decoder --from MODEL --out DIR`")
        name = Path(self.base).name
        trained = [k for k, v in (("decoder_budgets", self.decoder_budgets), ("decoder_lr", self.decoder_lr),
                                  ("lr_search", self.lr_search)) if v]
        if trained:
            raise UserError(f"base {self.base}: {', '.join(trained)} train or tune a decoder, and a base is only "
                            "loaded: leave them out")
        sizes = {*(self.decoder_sizes or []), *(p.get("decoder_size", name) for p in self.extra_points),
                 *(self.control_sizes or [])}
        if sizes - {name}:
            raise UserError(f"base {self.base}: decoder sizes {sorted(sizes - {name})} are not the base: leave "
                            f"decoder_sizes out (the study's one decoder is {name!r})")

    @property
    def knn_settings(self) -> TargetSettings:
        """The ``knn:`` keys over the shared defaults: the targets, and the kNN-LM (``knn_eval_index`` aside)."""
        return TargetSettings(**self.knn)

    @property
    def targets_scale(self) -> float | None:
        """The scale of the targets' temperature rule, or None where ``knn: {temperature: T}`` fixes T."""
        return None if "temperature" in self.knn or self.targets_from_knn_lm else self.targets_temperature_scale

    @property
    def targets_from_knn_lm(self) -> bool:
        """Whether the targets' T is the one the kNN-LM chose on valid (``knn: {temperature: T}`` fixes it instead)."""
        return self.targets_temperature == "knn_lm" and "temperature" not in self.knn

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/sweeps/{self.study}")

    @property
    def stores_dir(self) -> Path:
        """Where the datastores and targets go: ``store_dir``, else ``out``. They are the study's largest artifacts
        (9.2 GB of targets and up to 7.7 GB of keys per 12M-row trial) and are rebuilt whenever needed: in memory
        (``/dev/shm``) they leave the disk's 64 GiB to the study and take disk writes out of the targets' time,
        and they still survive a killed worker, if not the machine."""
        return Path(self.store_dir) if self.store_dir else self.out_dir

    @property
    def study_dir(self) -> Path:
        """This study's own tables (``results.csv``, ``trials.csv``): studies sharing an ``out`` share artifacts,
        never tables."""
        return self.out_dir / self.study

    def grid(self) -> list[dict[str, Any]]:
        """Every (decoder size, memory size, seed, swept settings…) point of the study."""
        from mlpmem_lightning.study import axes
        from mlpmem_lightning.study.decoders import decoder_source

        def matched(dec: str) -> str:
            return decoder_source(self.base, dec).matched_memory()

        points = []
        budgets = [{"decoder_budget": b} for b in self.decoder_budgets] if self.decoder_budgets else [{}]
        for dec, budget, seed in itertools.product(self.decoder_sizes, budgets, self.seeds):
            mems = [matched(dec)] if self.memory_sizes == "matched" else self.memory_sizes
            points += [{"decoder_size": dec, "memory_size": m, "seed": seed, **budget} for m in mems]
        for p in self.extra_points:  # at the largest budget unless the point names one
            budget = {"decoder_budget": float(p.get("decoder_budget", max(self.decoder_budgets)))} \
                if self.decoder_budgets else {}
            point = {"decoder_size": p["decoder_size"], "memory_size": p.get("memory_size")
                     or matched(p["decoder_size"]), "seed": int(p.get("seed", 0)), **budget}
            if point not in points:
                points.append(point)
        return [{**p, **combo} for p in points for combo in axes.combos(self)]


def _check_temperatures(grid: list[float] | None, scale: float | None) -> None:
    if grid is not None and (not isinstance(grid, list) or not grid
                             or not all(isinstance(t, (int, float)) and t > 0 for t in grid)):
        raise UserError(f"temperatures {grid!r} must be a non-empty list of numbers > 0 (or left out: 1/8 ... 1024)")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise UserError(f"targets_temperature_scale {scale!r} must be a number > 0 (or null: knn.temperature)")


def _renamed(raw: dict[str, Any], path: Path) -> None:
    """Read a renamed key under its new name, saying so; refuse a spec that gives both, differently."""
    if "knn_backend" in raw:
        backend = raw.pop("knn_backend")
        knn = dict(raw.get("knn") or {})
        if knn.get("backend", backend) != backend:
            raise UserError(f"{path}: knn_backend {backend!r} and knn.backend {knn['backend']!r} disagree: "
                            "drop knn_backend (renamed to knn: {backend: ...})")
        raw["knn"] = {**knn, "backend": backend}
        log.warning("%s: knn_backend is renamed: write knn: {backend: %s}", path, backend)


def _override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` (``knn.k`` reaches into a section) to ``value`` in the raw spec, as if the YAML said so."""
    *sections, last = key.split(".")
    here = raw
    for name in sections:
        if name == "sampler" and isinstance(here.get(name), str):  # sampler: tpe, then --set sampler.n_trials=8
            here[name] = {"name": here[name]}
        if here.get(name) is None:
            here[name] = {}
        if not isinstance(here[name], dict):
            raise UserError(f"--set {key}: {name} is not a section of the spec (e.g. knn.k=64)")
        here = here[name]
    here[last] = value


def _sampler_section(raw: dict[str, Any], path: Path) -> None:
    """``sampler: {name: tpe, n_trials: N, params: {decoder_lr: {low, high, log}}}`` read as its three keys."""
    section = raw.get("sampler")
    if not isinstance(section, dict):
        return
    bad = sorted(set(section) - {"name", "n_trials", "params"})
    if bad or "name" not in section:
        raise UserError(f"{path}: sampler section {section!r}: give name (random or tpe), n_trials and params "
                        "(e.g. {decoder_lr: {low: 1e-4, high: 1e-2, log: true}})")
    raw["sampler"] = section["name"]
    if "n_trials" in section:
        raw["n_trials"] = section["n_trials"]
    raw["ranges"] = section.get("params") or {}
