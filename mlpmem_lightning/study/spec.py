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
    decoder_sizes: list[str]
    memory_sizes: list[str] | str = "matched"  # "matched": the memory rung matched to each decoder
    seeds: list[int] = field(default_factory=lambda: [0])
    extra_points: list[dict[str, Any]] = field(default_factory=list)  # more (decoder_size, memory_size, seed)
    architectures: list[str] | None = None  # registry names to run (default: every registered architecture)
    control_sizes: list[str] | None = None  # decoder sizes the CE-only control (mlp_memory_ce) runs at
    objective: str = "mlp_memory"  # the architecture whose valid loss is the trial's value
    out: str | None = None  # default runs/sweeps/<study>
    storage: str | None = None  # default sqlite:///<out>/optuna.db; "journal:PATH"; any RDB URL
    sampler: str = "grid"  # grid | random | tpe
    n_trials: int | None = None  # for random/tpe (grid: the whole grid)
    corpus: str = "wiki-summaries"
    token_store: str | None = None  # default <out>/tokens
    prepare: dict[str, Any] = field(default_factory=dict)  # PrepareSettings overrides
    trainer: str = "cpu"  # experiments/trainer/<name>.yaml
    seq_len: int = 128
    batch_size: int = 16
    decoder_tokens: int = 1_000_000
    decoder_lr: float | None = None  # the decoders' peak learning rate (default: each rung's shipped one)
    memory_tokens: int = 1_000_000
    memory_mode: str = "online"
    alpha: float = 0.5
    knn: dict[str, Any] = field(default_factory=dict)  # TargetSettings overrides (index, k, temperature, backend, ...)
    knn_eval_index: str | None = None  # index for kNN-LM evaluation (default: knn.index)
    temperatures: list[float] | None = None  # kNN-LM's T grid, chosen with λ on valid (default 1/8, 1/4, ..., 1024)
    targets_temperature_scale: float | None = 0.1  # targets' T = scale x median neighbour distance (knn/temperature.py)
    lambda_: float | None = None  # YAML key "lambda": fix λ instead of choosing it on valid
    prune: bool = False
    num_workers: int = 0  # DataLoader workers per fit/evaluation
    eval_batch_size: int | None = None  # windows per evaluation batch (default batch_size; larger = fewer searches)
    datastore: dict[str, Any] = field(default_factory=dict)  # DatastoreSettings overrides (batch_size, precision)
    cleanup: bool = False  # delete each trial's datastore and targets once it is evaluated (disk-bound studies)
    heartbeat: int = 60  # seconds between a running trial's heartbeats (RDB storages); stale after 4 of them

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
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
        if "lambda" in raw:
            raw["lambda_"] = raw.pop("lambda")
        _renamed(raw, path)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"{path}: unknown keys {', '.join(unknown)}; valid keys: "
                            f"{', '.join(sorted(known - {'lambda_'}) + ['lambda'])}")
        missing = [k for k in ("study", "decoder_sizes") if k not in raw]
        if missing:
            raise UserError(f"{path}: missing required keys {', '.join(missing)}")
        spec = cls(**raw)
        spec.validate()
        return spec

    def validate(self) -> None:
        from mlpmem_lightning.knn.datastore import DatastoreSettings
        from mlpmem_lightning.knn.search import choices as backend_choices
        from mlpmem_lightning.models.ladder import get_memory_size, get_size

        if not isinstance(self.study, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.study) \
                or self.study in RESERVED:
            raise UserError(f"study {self.study!r}: name it with letters, digits, '.', '_' or '-' (it names "
                            f"<out>/<study>/results.csv), not one of {', '.join(sorted(RESERVED))}")
        if self.decoder_lr is not None and not (isinstance(self.decoder_lr, (int, float)) and self.decoder_lr > 0):
            raise UserError(f"decoder_lr {self.decoder_lr!r} must be a positive number (or left out: each rung's)")
        for s in [*self.decoder_sizes, *(p.get("decoder_size", "?") for p in self.extra_points)]:
            get_size(s)
        studied = {*self.decoder_sizes, *(p.get("decoder_size") for p in self.extra_points)}
        if self.control_sizes is not None and not set(self.control_sizes) <= studied:
            raise UserError(f"control_sizes {sorted(set(self.control_sizes) - studied)} are not decoder sizes of the "
                            "study: list them in decoder_sizes (or extra_points) too")
        if self.memory_sizes != "matched":
            for s in self.memory_sizes:
                get_memory_size(s)
        if self.sampler not in ("grid", "random", "tpe"):
            raise UserError(f"sampler {self.sampler!r}: choose grid, random or tpe")
        if not 0 <= self.alpha <= 1 or (self.lambda_ is not None and not 0 <= self.lambda_ <= 1):
            raise UserError("alpha and lambda must lie in [0, 1]")
        _check_temperatures(self.temperatures, self.targets_temperature_scale)
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

    @property
    def knn_settings(self) -> TargetSettings:
        """The ``knn:`` keys over the shared defaults: the targets, and the kNN-LM (``knn_eval_index`` aside)."""
        return TargetSettings(**self.knn)

    @property
    def targets_scale(self) -> float | None:
        """The scale of the targets' temperature rule, or None where ``knn: {temperature: T}`` fixes T."""
        return None if "temperature" in self.knn else self.targets_temperature_scale

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/sweeps/{self.study}")

    @property
    def study_dir(self) -> Path:
        """This study's own tables (``results.csv``, ``trials.csv``): studies sharing an ``out`` share artifacts,
        never tables."""
        return self.out_dir / self.study

    def grid(self) -> list[dict[str, Any]]:
        """Every (decoder size, memory size, seed) point of the study."""
        from mlpmem_lightning.models.ladder import matched_memory

        points = []
        for dec, seed in itertools.product(self.decoder_sizes, self.seeds):
            mems = [matched_memory(dec).name] if self.memory_sizes == "matched" else self.memory_sizes
            points += [{"decoder_size": dec, "memory_size": m, "seed": seed} for m in mems]
        for p in self.extra_points:
            point = {"decoder_size": p["decoder_size"], "memory_size": p.get("memory_size")
                     or matched_memory(p["decoder_size"]).name, "seed": int(p.get("seed", 0))}
            if point not in points:
                points.append(point)
        return points


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
