"""LightningCLI for `mlpmem fit|validate|test`.

What it adds to the stock CLI, and why:
- a fixed run directory (``trainer.default_root_dir``, derived from data, model and
  seed when unset) that holds the saved config, CSV and TensorBoard logs and
  ``checkpoints/{best,last}.ckpt``, so a run can be found, compared and resumed;
- ``fit`` resumes from that directory's ``last.ckpt`` when one exists, so re-running an
  interrupted command continues it (and re-running a finished one trains no further);
- validate/test log into ``<run dir>/<subcommand>/`` so they never overwrite the fit's logs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.datamodule import LMDataModule
from mlpmem_lightning.lightning import (
    memory_lm,  # noqa: F401  (register the models for --model)
)

EVAL_ONLY = ("lambdas", "lambda_")


class MlpmemCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss", "checkpoint.mode": "min", "checkpoint.save_top_k": 1,
            "checkpoint.save_last": True, "checkpoint.filename": "best",
            "checkpoint.auto_insert_metric_name": False, "checkpoint.enable_version_counter": False,
        })

    def _parse_ckpt_path(self) -> None:
        """Lightning applies a checkpoint's hparams over the command line; evaluation settings (the λ grid
        and the λ chosen on valid) are not the model's, so the command line keeps them."""
        args = self.config[self.config.subcommand].model.get("init_args") if self.config.get("subcommand") else None
        keep = {k: args[k] for k in EVAL_ONLY if args is not None and k in args}
        super()._parse_ckpt_path()
        for key, value in keep.items():
            self.config[self.config.subcommand].model.init_args[key] = value

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if cfg.trainer.default_root_dir is None:
            model = cfg.model.class_path.rsplit(".", 1)[-1]
            args = cfg.model.init_args or {}
            size = args.get("size") or Path(str(args.get("datastore") or args.get("decoder") or "model")).name
            cfg.trainer.default_root_dir = str(
                Path("runs") / Path(cfg.data.token_store).name / f"{model}-{size}-seed{cfg.seed_everything}")
        self.run_dir = Path(cfg.trainer.default_root_dir)
        if self.subcommand != "fit":
            cfg.trainer.default_root_dir = str(self.run_dir / self.subcommand)
        self._default_loggers = cfg.trainer.logger in (None, True)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self._default_loggers:
            root = trainer.default_root_dir
            trainer.loggers = [CSVLogger(root, name="", version=""), TensorBoardLogger(root, name="", version="")]
            trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))
        return trainer

    def before_fit(self) -> None:
        ckpt_dir = self.trainer.checkpoint_callback.dirpath or self.run_dir / "checkpoints"
        last = Path(ckpt_dir) / "last.ckpt"
        if self.config_init["fit"].get("ckpt_path") is None and last.is_file():
            print(f"resuming from {last}")
            self.config_init["fit"]["ckpt_path"] = str(last)


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
            save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "mlpmem"},
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
