"""LightningCLI for `mlpmem fit|validate|test`.

What it adds to the stock CLI, and why:
- a fixed run directory (``trainer.default_root_dir``, derived from data, model and
  seed when unset) that holds the saved config, CSV and TensorBoard logs and
  ``checkpoints/{best,last}.ckpt``, so a run can be found, compared and resumed;
- ``fit`` resumes from that directory's ``last.ckpt`` when one exists, so re-running an
  interrupted command continues it; it holds the directory's lock, refuses a run saved with other
  settings and leaves a finished run untouched (:mod:`..lightning.run_dir`); ``metrics.csv`` is appended
  to, checkpoints are written atomically and the last step is saved (:mod:`..lightning.run_io`);
- a token budget: ``--model.max_tokens`` sets ``trainer.max_steps`` before the Trainer exists
  (``--trainer.max_steps``, when given, wins);
- every fit logs tokens/s and MFU once per logging interval (``IntervalThroughput``: no per-step sync);
- validate/test log into ``<run dir>/<subcommand>/`` so they never overwrite the fit's logs;
- ``config.yaml`` and checkpoints stay in the run directory whatever ``--trainer.logger`` is (``RunDirConfig``,
  the checkpoint's ``dirpath``; a logger's unset ``save_dir`` becomes the run directory);
- ``test`` of a mixture takes λ from the run's validate when ``--model.lambda_`` is unset
  (:mod:`..lightning.valid_lambda`);
- no ``--optimizer``/``--lr_scheduler``: the modules configure their own AdamW and schedule;
- ``--config experiments/...`` finds the shipped configs from any directory, checkout or not.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.resources import resolve_shipped
from mlpmem_lightning.data.datamodule import LMDataModule
from mlpmem_lightning.lightning.convergence import ConvergenceMonitor
from mlpmem_lightning.lightning.decoder_lm import DecoderLM
from mlpmem_lightning.lightning.evaluation import LambdaGridEvaluation
from mlpmem_lightning.lightning.knn_lm import KNNLM
from mlpmem_lightning.lightning.memory_lm import MemoryLM
from mlpmem_lightning.lightning.optim import steps_for_tokens
from mlpmem_lightning.lightning.run_dir import check_config, finished_line, logs_into_run_dir, run_lock
from mlpmem_lightning.lightning.run_io import AppendingCSVLogger, AtomicCheckpointIO, RunCheckpoint
from mlpmem_lightning.lightning.throughput import IntervalThroughput
from mlpmem_lightning.lightning.valid_lambda import lambda_from_validate

MODELS = (DecoderLM, KNNLM, MemoryLM)  # imported so that --model finds them by class name


class RunDirConfig(SaveConfigCallback):
    """``config.yaml`` in the run directory (``trainer.default_root_dir``), whatever the logger.

    Lightning's writes it into ``trainer.log_dir``, which for W&B and other loggers without a log directory is
    their ``save_dir`` (``.``): every run would overwrite ``./config.yaml``, and resume and ``--decoder RUN``,
    which read ``<run>/config.yaml``, would not find it."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            root = Path(trainer.default_root_dir)
            root.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(root / self.config_filename), skip_none=False,
                             overwrite=self.overwrite, multifile=self.multifile)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class MlpmemCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss", "checkpoint.mode": "min", "checkpoint.save_top_k": 1,
            "checkpoint.save_last": True, "checkpoint.filename": "best",
            "checkpoint.auto_insert_metric_name": False, "checkpoint.enable_version_counter": False,
        })

    def parse_arguments(self, parser, args) -> None:
        """As LightningCLI's, with shipped ``--config experiments/...`` paths found from any directory."""
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(shipped_configs(sys.argv[1:] if args is None else list(args)))
        # LightningCLI applies a checkpoint's hparams over these next; checkpoints written before the λ grid left the
        # hparams still carry lambda_/lambdas (None), which would silently replace the λ asked for here
        sub = self.config.get("subcommand")
        init = self.config[sub].model.get("init_args") if sub else None
        self._eval_only = {k: init[k] for k in LambdaGridEvaluation.EVAL_ONLY if init is not None and k in init}

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        for key, value in self._eval_only.items():  # the command line's λ, not an old checkpoint's (parse_arguments)
            cfg.model.init_args[key] = value
        if cfg.trainer.default_root_dir is None:
            model = cfg.model.class_path.rsplit(".", 1)[-1]
            args = cfg.model.init_args or {}
            size = args.get("size") or Path(str(args.get("datastore") or args.get("decoder") or "model")).name
            cfg.trainer.default_root_dir = str(
                Path("runs") / Path(cfg.data.token_store).name / f"{model}-{size}-seed{cfg.seed_everything}")
        self.run_dir = Path(cfg.trainer.default_root_dir)
        if self.subcommand == "test":
            self._lambda_from_validate(cfg)
        if self.subcommand != "fit":
            cfg.trainer.default_root_dir = str(self.run_dir / self.subcommand)
        else:
            self._apply_token_budget(cfg)
        self._default_loggers = cfg.trainer.logger in (None, True)
        if not self._default_loggers:
            logs_into_run_dir(cfg.trainer.logger, cfg.trainer.default_root_dir)

    def _lambda_from_validate(self, cfg) -> None:
        """A mixture's test without ``--model.lambda_`` takes λ from this run's validate (:mod:`.valid_lambda`)."""
        import yaml

        init = cfg.model.init_args
        if init is None or "lambda_" not in init or init["lambda_"] is not None:
            return
        now = yaml.safe_load(self._parser("test").dump(self.config["test"], skip_none=False))
        lam, why = lambda_from_validate(self.run_dir, now)  # every rank reads it: all log the same keys
        init["lambda_"] = lam
        if rank_zero_only.rank != 0:
            return
        if lam is None:
            print(f"test: {why}, so no λ chosen on valid: test/loss is not reported, the best λ on test is logged "
                  "as test/loss_at_best_test_lambda; run validate first or pass --model.lambda_")
        else:
            print(f"test: λ = {lam} chosen on valid ({why})")

    @staticmethod
    def _apply_token_budget(cfg) -> None:
        """``trainer.max_steps`` from ``model.max_tokens``, unless the command line set max_steps itself."""
        max_tokens = (cfg.model.init_args or {}).get("max_tokens")
        if max_tokens is None or (cfg.trainer.max_steps or -1) > 0:
            return
        step = cfg.data.batch_size * cfg.data.seq_len * (cfg.trainer.accumulate_grad_batches or 1) * _world_size(cfg)
        cfg.trainer.max_steps = steps_for_tokens(max_tokens, step)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self._default_loggers and not trainer.fast_dev_run:  # fast_dev_run logs nothing (Lightning's rule)
            root = trainer.default_root_dir
            trainer.loggers = [AppendingCSVLogger(root, name="", version=""),
                               TensorBoardLogger(root, name="", version="")]
            trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "fit":
            if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath is None:
                # not under the logger's save_dir/name/version (W&B: ./<project>/<id>/), which resume never finds
                trainer.checkpoint_callback.dirpath = str((self.run_dir / "checkpoints").resolve())
            trainer.callbacks.append(IntervalThroughput())
            if isinstance(self.model, DecoderLM):  # every decoder fit says whether it converged for its budget
                trainer.callbacks.append(ConvergenceMonitor())
            if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
                trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """``fit`` holds the run directory's lock (rank 0; a ``fast_dev_run`` writes nothing, so takes none)."""
        if subcommand != "fit" or self.trainer.fast_dev_run or rank_zero_only.rank != 0:
            return super()._run_subcommand(subcommand)
        with run_lock(self.run_dir):
            return super()._run_subcommand(subcommand)

    def before_fit(self) -> None:
        """Refuse a run saved with other settings; note a finished one; else resume from its ``last.ckpt``."""
        self._finished = None
        if self.trainer.fast_dev_run:  # a smoke test of the command: no resume, nothing written
            return
        check_config(self.run_dir, self._parser("fit").dump(self.config["fit"], skip_none=False))
        ckpt_dir = self.trainer.checkpoint_callback.dirpath or self.run_dir / "checkpoints"
        last = Path(ckpt_dir) / "last.ckpt"
        if self.config_init["fit"].get("ckpt_path") is None and last.is_file():
            self._finished = finished_line(self.run_dir, last, self.trainer.max_steps)
            if self._finished is None:
                print(f"resuming from {last}")
                self.config_init["fit"]["ckpt_path"] = str(last)

    def fit(self, **kwargs) -> None:
        """``trainer.fit``, unless the run is finished: then one line, and nothing trained or rewritten."""
        if self._finished:
            print(self._finished)
            return
        self.trainer.fit(**kwargs)


def _world_size(cfg) -> int:
    """Processes the Trainer will run, from its config (the Trainer does not exist yet when max_steps is set)."""
    import torch

    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes or 1
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    elif str(devices).lstrip("-").isdigit() and int(devices) > 0:
        n = int(devices)
    else:  # "auto" or -1: every visible GPU when the accelerator may be one, else one CPU process
        gpu = str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        n = torch.cuda.device_count() if gpu else 1
    return n * nodes


def shipped_configs(args: list[str]) -> list[str]:
    """``--config experiments/x.yaml`` resolved to the installed copy when the path does not exist here."""
    out, expect = [], False
    for a in args:
        if expect:
            a, expect = str(resolve_shipped(a)), False
        elif a in ("-c", "--config"):
            expect = True
        elif a.startswith("--config="):
            a = "--config=" + str(resolve_shipped(a.split("=", 1)[1]))
        out.append(a)
    return out


def run_cli(args: list[str] | dict[str, Any], callbacks: Sequence[Callback] = ()) -> MlpmemCLI:
    """Run one LightningCLI command in-process (used by `mlpmem`, the sweep, the demo and the tests).

    ``args`` is a command line (``["fit", "--config", ...]``) or the same as a structured config
    (``{"subcommand": "fit", "fit": {"model": {...}, "data": {...}, ...}}``), which is how the sweep builds
    its stages from settings objects. ``callbacks`` are added to the Trainer's (objects such as an Optuna
    pruning callback, which no config can name).
    """
    try:
        return MlpmemCLI(
            LightningModule, LMDataModule, subclass_mode_model=True,
            args=None if args == sys.argv[1:] else args,  # LightningCLI warns when given both
            save_config_callback=RunDirConfig, save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "mlpmem"},
            # the modules build their own AdamW + warmup-cosine (OptimSettings, the CUDA-graph step's capturable
            # AdamW): LightningCLI's --optimizer/--lr_scheduler would be ignored or break it, so they are not offered
            auto_configure_optimizers=False,
            seed_everything_default=0, trainer_defaults={"callbacks": list(callbacks)} if callbacks else None,
        )
    except Exception as err:  # jsonargparse wraps errors raised in __init__; surface ours
        user_error = _find_user_error(err)
        if user_error is None:
            raise
        raise user_error from None


def _find_user_error(err: BaseException | None) -> UserError | None:
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None
