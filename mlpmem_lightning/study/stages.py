"""One trial's shared stages (decoder fit -> datastore -> targets) and the configs every stage is built from.

A shared stage runs only when an architecture of the study needs it, at most once per trial, in
directories named by size and seed and keyed by a short hash of everything that changes their result
(``decoders/<size>-seed<s>-<hash8>``, ``datastores/…``, ``targets/…``; docs/artifacts.md): trials with the
same decoder reuse its checkpoint, datastore and targets, a re-run after a crash resumes each, and an edited
spec (another budget, learning rate, batch…) builds beside the old artifacts instead of over them. Workers
sharing an ``out`` wait for an artifact another worker is writing (:mod:`.locks`). Every LightningCLI stage
is a structured config built here from the spec's settings (the shipped trainer YAML, the data module's
settings, the model's ``init_args``), the same commands a user runs.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlpmem_lightning import __version__
from mlpmem_lightning.core.artifacts import hash_json
from mlpmem_lightning.core.resources import experiments_dir
from mlpmem_lightning.study import locks
from mlpmem_lightning.study.spec import SweepSpec

if TYPE_CHECKING:  # importing lightning (torch) is for the stages that run, not for reading the registry
    from lightning.pytorch import Callback

log = logging.getLogger(__name__)

SHARED = ("decoder", "datastore", "targets")  # in the order they run
REQUIRES = {"decoder": (), "datastore": ("decoder",), "targets": ("datastore",)}
TIMED_AS = {"decoder": "decoder_fit", "datastore": "datastore", "targets": "targets"}  # time_<name>_s


def closure(needs: Sequence[str]) -> tuple[str, ...]:
    """The shared stages ``needs`` names and every stage they are built from, in running order."""
    todo, seen = list(needs), set()
    while todo:
        stage = todo.pop()
        if stage not in REQUIRES:
            raise ValueError(f"unknown shared stage {stage!r}: choose from {', '.join(SHARED)}")
        if stage not in seen:
            seen.add(stage)
            todo += REQUIRES[stage]
    return tuple(s for s in SHARED if s in seen)


@dataclass
class Stages:
    """A trial: its point, its shared artifacts, and what it spent (FLOPs, wall seconds) per stage."""

    spec: SweepSpec
    decoder_size: str
    memory_size: str
    seed: int
    token_store: Path
    callbacks: Sequence[Callback] = ()  # added to every fit's Trainer (Optuna pruning)
    budget: float | None = None  # the decoder trains on budget x the rule of study/budget.py (else decoder_tokens)

    def __post_init__(self) -> None:
        from mlpmem_lightning.data.token_store import TokenStore
        from mlpmem_lightning.study.decoders import decoder_source

        self.store = TokenStore(self.token_store)
        # a ladder rung this trial trains, or the spec's pretrained base it only loads (study/decoders.py)
        self.source = decoder_source(self.spec.base, self.decoder_size)
        self.vocab = self.store.vocab_size
        self.tag = f"{self.decoder_size}-seed{self.seed}"
        self.times: dict[str, float] = {}  # time_<stage>_s
        self.flops: dict[str, int] = {}  # FLOPs of each shared stage that ran (keys: SHARED)
        self.attrs: dict[str, Any] = {}  # trial attributes: sizes, tokens, rows, FLOPs per stage
        self.users = locks.Users(self.out)  # the datastore and targets this trial uses: cleanup spares others'
        self.slot = locks.Slots(self.out, self.spec.stores_at_once)  # taken before the datastore, kept to the end

    # -- paths and quantities every architecture reads ---------------------------------------------
    @property
    def out(self) -> Path:
        return self.spec.out_dir

    def key(self, *what: Any) -> str:
        """8 hex digits of ``what`` (configs, settings, the keys of the artifacts it is built from)."""
        return hash_json(what)[:8]

    def config_key(self, subcommand: str, model: dict[str, Any], data: dict[str, Any] | None = None) -> str:
        """The key of a LightningCLI stage: its whole config but the run directory (and the progress bar), with
        the token store's fingerprint. Any change to what the run is given gives another directory, so a run
        directory never holds two configs (``fit`` refuses to resume one whose saved config differs)."""
        cfg = self.config(subcommand, model, Path("."), data)[subcommand]
        trainer = {k: v for k, v in cfg["trainer"].items() if k not in ("default_root_dir", "enable_progress_bar")}
        return self.key({**cfg, "trainer": trainer}, self.store.fingerprint)

    @cached_property
    def decoder_model(self) -> dict[str, Any]:
        """The decoder fit's model: the rung's shipped config (its learning rate unless the spec's ``decoder_lr``)
        with the spec's token budget."""
        from mlpmem_lightning.lightning.optim import OPTIM

        shipped = yaml.safe_load((experiments_dir() / "model" / f"decoder_{self.decoder_size}.yaml").read_text())
        model = shipped["model"]
        lr = {"lr": self.decoder_lr} if self.spec.decoder_lr is not None else {}
        # on a GPU the small rungs are launch-bound: compiled loss and the whole step as a CUDA graph (docs/gpu.md)
        speed = {"compile": True, "cuda_graph": True} if self.on_gpu() else {}
        # the warmup rule in the key: decoders trained under the old one (2%, no floor) are not reused as if same
        warmup = {"warmup_fraction": OPTIM.warmup_fraction, "warmup_min_steps": OPTIM.warmup_min_steps}
        return {**model, "init_args": {**model.get("init_args", {}), "max_tokens": self.decoder_budget_tokens, **lr,
                                       **warmup, **speed}}

    @property
    def rung(self):
        """The ladder rung of a trial that trains its decoder (a pretrained base has none: ask ``source``)."""
        return self.source.rung

    @cached_property
    def decoder_budget_tokens(self) -> int:
        """The decoder's token budget: the trial's ``budget`` x the rule of study/budget.py, else ``decoder_tokens``
        (0 for a pretrained base: this study trains it on nothing)."""
        if self.source.pretrained:
            return 0
        if self.budget is None:
            return self.spec.decoder_tokens
        from mlpmem_lightning.study.budget import budget_tokens

        return budget_tokens(self.decoder_size, self.vocab, self.store.manifest["tokens"]["train"], self.budget)

    @cached_property
    def decoder_lr(self) -> float:
        """The spec's ``decoder_lr``, or the one recorded for this rung and budget (``{from: lr.csv}``)."""
        if not isinstance(self.spec.decoder_lr, dict):
            return self.spec.decoder_lr
        from mlpmem_lightning.study.lr_search import recorded_lr

        return recorded_lr(self.spec.decoder_lr["from"], self.decoder_size, self.decoder_budget_tokens,
                           self.store.fingerprint)

    def recipe(self) -> dict[str, Any]:
        """Results columns on whether the decoder converged for its budget (its ``lr`` and ``epochs`` are every
        architecture's own columns: ``study/columns.py``)."""
        from mlpmem_lightning.lightning.convergence import read_summary

        if self.source.pretrained:
            return {"last10_improvement": None, "converged": None}
        conv = read_summary(self.decoder_run)
        return {"last10_improvement": conv.get("last10_improvement"), "converged": conv.get("converged")}

    @cached_property
    def decoder_key(self) -> str:
        if self.source.pretrained:  # the base's weights and tokenizer, and the token store it reads
            return self.key(self.decoder_fingerprint, self.store.fingerprint)
        return self.config_key("fit", self.decoder_model)

    @cached_property
    def datastore_settings(self):
        from mlpmem_lightning.knn.datastore import DatastoreSettings

        return DatastoreSettings(seq_len=self.spec.seq_len, **self.spec.datastore)

    @cached_property
    def datastore_key(self) -> str:
        from dataclasses import asdict

        return self.key(self.decoder_key, asdict(self.datastore_settings))

    @cached_property
    def targets_key(self) -> str:
        from dataclasses import asdict

        from mlpmem_lightning.knn.search.base import SEARCH_REVISION

        rule = self.spec.targets_scale  # the targets' T rule (knn/temperature.py) is part of what they are
        revision = {"search_revision": SEARCH_REVISION}  # targets of an older search are not these
        if self.spec.targets_from_knn_lm:  # T is a function of the kNN-LM's grid on valid (and a fixed λ)
            from mlpmem_lightning.study.knn_eval import temperature_grid

            chosen = {"temperature_from": "knn_lm", "temperatures": temperature_grid(self.spec),
                      "lambda": self.spec.lambda_, "eval_index": self.spec.knn_eval_index}
            return self.key(self.datastore_key, asdict(self.spec.knn_settings), chosen, revision)
        return self.key(self.datastore_key, asdict(self.spec.knn_settings), revision,
                        *([{"temperature_scale": rule}] if rule else []))

    @property
    def decoder_dir(self) -> Path:
        """``decoders/<size>-seed<s>-<hash8>``: the fit's run directory, or where a base's evaluation logs go."""
        return self.out / "decoders" / f"{self.tag}-{self.decoder_key}"

    @property
    def decoder_run(self) -> Path:
        """The decoder the later stages load: the fit's run directory, or the pretrained base itself."""
        return self.source.path if self.source.pretrained else self.decoder_dir

    def decoder_eval(self) -> tuple[dict[str, Any], Path, Path | None]:
        """How decoder-only is scored: (DecoderLM's init_args, the run directory its logs go to, checkpoint). A
        pretrained base is evaluated from its directory, with logs under ``out`` (never inside the base)."""
        if self.source.pretrained:
            return {"init_from": str(self.source.path)}, self.decoder_dir, None
        return {"size": self.decoder_size}, self.decoder_run, self.decoder_run / "checkpoints" / "best.ckpt"

    @property
    def datastore_dir(self) -> Path:
        return self.spec.stores_dir / "datastores" / f"{self.tag}-{self.datastore_key}"

    @property
    def targets_dir(self) -> Path:
        return self.spec.stores_dir / "targets" / f"{self.tag}-{self.targets_key}"

    def exclusive(self, path: Path):
        """Hold ``path`` for this worker, waiting while another worker of the study writes it (:mod:`.locks`)."""
        return locks.waiting_for(self.out, path)

    @property
    def params_decoder(self) -> int:
        return self.source.params_total(self.vocab, self.family)

    def tokens(self, budget: int) -> int:
        """Tokens a fit with this token budget trains on: whole steps of batch_size x seq_len."""
        step = self.spec.batch_size * self.spec.seq_len
        return math.ceil(budget / step) * step

    @property
    def decoder_tokens(self) -> int:
        return self.tokens(self.decoder_budget_tokens)

    @cached_property
    def decoder(self):
        """The decoder as the later stages load it (its fingerprint and family); a base's is its source's own."""
        from mlpmem_lightning.models.loading import load_decoder

        return self.source.loaded if self.source.pretrained else load_decoder(self.decoder_run)

    @property
    def decoder_fingerprint(self) -> str:
        return self.decoder.fingerprint

    @property
    def family(self) -> str:
        """The family the decoder was trained as: its FLOPs and parameters are that family's."""
        return self.decoder.family

    # -- bookkeeping -----------------------------------------------------------------------------
    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Wall seconds of a stage, recorded as the trial attribute ``time_<stage>_s``."""
        start = time.perf_counter()
        yield
        self.times[f"time_{stage}_s"] = round(time.perf_counter() - start, 2)

    # -- LightningCLI stages from settings ---------------------------------------------------------
    def config(self, subcommand: str, model: dict[str, Any], root: Path, data: dict[str, Any] | None = None,
               ckpt: Path | None = None) -> dict[str, Any]:
        """The structured config of ``mlpmem <subcommand>``: the spec's trainer YAML, data and seed, and ``model``
        (``{"class_path": <LightningModule name>, "init_args": {...}}``)."""
        spec, shipped = self.spec, copy.deepcopy(self.trainer_yaml)  # the run may alter what it is given
        # a fit's progress bar on a terminal only; evaluations print no result tables (the trial's summary line does)
        bar = subcommand == "fit" and sys.stdout.isatty()
        trainer = {**shipped.get("trainer", {}), "default_root_dir": str(root), "enable_progress_bar": bar}
        data = {"token_store": str(self.token_store), "seq_len": spec.seq_len, "batch_size": spec.batch_size,
                "num_workers": spec.num_workers,
                **({"eval_batch_size": spec.eval_batch_size} if spec.eval_batch_size else {}), **(data or {})}
        cfg = {**shipped, "trainer": trainer, "model": model, "data": data, "seed_everything": self.seed}
        quiet = {"verbose": False} if subcommand in ("validate", "test") else {}
        return {"subcommand": subcommand, subcommand: {**cfg, **quiet, **({"ckpt_path": str(ckpt)} if ckpt else {})}}

    def run(self, subcommand: str, model: dict[str, Any], root: Path, data: dict[str, Any] | None = None,
            ckpt: Path | None = None) -> dict[str, float]:
        """Run one stage in-process; its logged metrics. Only fits get the trial's callbacks.

        An evaluation already run with the same config on the same checkpoint returns its recorded metrics: the
        trials of one decoder (several memory sizes on one base, a control beside a memory) evaluate the decoder
        and its kNN-LM identically, and on SmolLM2 each repeat of the kNN-LM's passes costs over a minute."""
        import json

        from mlpmem_lightning.cli.lightning import run_cli
        from mlpmem_lightning.core.artifacts import atomic_write_text
        from mlpmem_lightning.knn.search.base import SEARCH_REVISION

        record = None
        if subcommand in ("validate", "test"):
            done = ckpt.stat() if ckpt is not None else None  # a refitted checkpoint is another evaluation
            key = self.key(self.config_key(subcommand, model, data), str(ckpt),
                           [done.st_size, done.st_mtime_ns] if done else None,
                           self.decoder_fingerprint if self.source.pretrained else None,
                           SEARCH_REVISION)  # a kNN-LM's record holds its search's neighbours
            record = root / f"{subcommand}-metrics-{key}.json"
            if record.is_file():
                return json.loads(record.read_text())
        callbacks = self.callbacks if subcommand == "fit" else ()
        cli = run_cli(self.config(subcommand, model, root, data, ckpt), callbacks=callbacks)
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        del cli
        release_device_memory()
        if record is not None:
            atomic_write_text(record, json.dumps(metrics, indent=1))
        return metrics

    @cached_property
    def trainer_yaml(self) -> dict[str, Any]:
        """The spec's shipped trainer config (``experiments/trainer/<trainer>.yaml``), read once per trial."""
        return yaml.safe_load((experiments_dir() / "trainer" / f"{self.spec.trainer}.yaml").read_text()) or {}

    def on_gpu(self) -> bool:
        """Whether the spec's trainer YAML trains on a GPU (``accelerator: gpu``, or ``auto`` with one present)."""
        import torch

        accelerator = self.trainer_yaml.get("trainer", {}).get("accelerator", "auto")
        return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())

    # -- the shared stages -------------------------------------------------------------------------
    def run_shared(self, needs: Sequence[str]) -> None:
        """Run (or reuse) every shared stage ``needs`` names, with the stages they are built from."""
        dirs = {"decoder": self.decoder_run, "datastore": self.datastore_dir, "targets": self.targets_dir}
        stages = closure(needs)
        for stage in stages:
            if stage == "datastore":
                self.make_room("targets" in stages)
            with self.exclusive(dirs[stage]), self.timed(TIMED_AS[stage]):  # the wait is not the stage's time
                getattr(self, f"_{stage}")()
                if stage != "decoder":  # held before the build lock is let go: no cleanup can come between
                    self.users.hold(dirs[stage])

    def make_room(self, with_targets: bool) -> None:
        """Take a store slot and check the room for this trial's datastore (and targets) first
        (:func:`.store_room.make_room`)."""
        from mlpmem_lightning.study.store_room import make_room

        make_room(self, with_targets)

    def release(self) -> None:
        """Let go of the artifacts this trial used and of its store slot (at the trial's end, however it ends)."""
        self.users.release_all()
        self.slot.release()

    def provenance(self) -> dict[str, Any]:
        """Results columns saying what the rows were computed from (``mlpmem report`` checks the token store)."""
        return {**({"datastore_rows": self.rows} if "datastore" in self.flops else {}),
                "token_store_fingerprint": self.store.fingerprint, "decoder_fingerprint": self.decoder_fingerprint,
                **({"targets_fingerprint": self.targets_fingerprint} if "targets" in self.flops else {}),
                "mlpmem_version": __version__}

    def _decoder(self) -> None:
        from mlpmem_lightning.models.flops import decoder_train_flops

        if self.source.pretrained:  # loaded, not trained: its pretraining is not this study's compute
            self.store.check_tokenizer(self.decoder.tokenizer_fingerprint, str(self.decoder_run))  # one line if not
            self.flops["decoder"] = 0
        else:
            self.run("fit", self.decoder_model, self.decoder_run)
            self.flops["decoder"] = decoder_train_flops(self.rung, self.vocab, self.spec.seq_len,
                                                        self.decoder_tokens, family=self.family)
        self.attrs.update(flops_decoder_train=self.flops["decoder"], params_decoder=self.params_decoder,
                          decoder_tokens=self.decoder_tokens)

    def _datastore(self) -> None:
        from mlpmem_lightning.knn.datastore import Datastore, build_datastore

        build_datastore(self.decoder_run, self.token_store, self.datastore_dir, self.datastore_settings)
        self.rows = len(Datastore(self.datastore_dir))
        self.flops["datastore"] = self.rows * self.source.forward_flops(self.vocab, self.spec.seq_len, self.family)
        self.attrs.update(flops_datastore=self.flops["datastore"], datastore_rows=self.rows)

    def _targets(self) -> None:
        from mlpmem_lightning.knn.targets import build_targets, default_nlist
        from mlpmem_lightning.knn.temperature import targets_settings
        from mlpmem_lightning.models.flops import search_flops

        if self.spec.targets_from_knn_lm:
            from mlpmem_lightning.knn.temperature import recorded_temperature
            from mlpmem_lightning.study.knn_eval import chosen_temperature

            # finished targets (a resumed or second trial) give their T: no kNN-LM pass to choose it again
            recorded = recorded_temperature(self.targets_dir)
            knn = replace(self.spec.knn_settings,
                          temperature=recorded if recorded is not None else chosen_temperature(self))
        else:
            knn = targets_settings(self.spec.knn_settings, self.spec.targets_scale, self.datastore_dir,
                                   self.targets_dir)
        manifest = build_targets(self.datastore_dir, self.targets_dir, knn)  # knn carries the backend (knn.backend)
        nlist = knn.nlist or default_nlist(self.rows)
        self.flops["targets"] = search_flops(self.rows, self.rows, self.source.d_model, knn.index, nlist, knn.nprobe)
        self.targets_fingerprint = manifest["fingerprint"]
        self.attrs.update(flops_search=self.flops["targets"], targets_mass_kept_mean=manifest["mass_kept_mean"],
                          targets_temperature=manifest["temperature"])

    def shared_flops(self, needs: Sequence[str]) -> int:
        """FLOPs of the shared stages ``needs`` is built from: what an architecture spent before its own training."""
        return sum(self.flops[stage] for stage in closure(needs))

    def cleanup(self) -> None:
        """Delete the datastore and targets (``cleanup: true``): they are rebuilt from the checkpoint if needed.
        One that another worker's trial still uses is left to that trial, which deletes it when it ends."""
        for path in (self.targets_dir, self.datastore_dir):
            with self.exclusive(path), self.users.sole(path) as alone:
                if alone and path.exists():
                    shutil.rmtree(path)


def release_device_memory() -> None:
    """Free what a finished in-process stage left on the GPU before the worker's next stage. The trainer and its
    module form reference cycles that only the collector breaks, and the caching allocator keeps their blocks; a
    worker holds 1/N of the GPU (study/workers.py), so the next stage would otherwise start with less than its share."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
