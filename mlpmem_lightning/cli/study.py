"""Subcommands of a study: sweep -> report, and the demo that runs both."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlpmem_lightning.cli.command import Command


# -- sweep and report -----------------------------------------------------------------------------
def args_sweep(p: argparse.ArgumentParser) -> None:
    from mlpmem_lightning.cli.argtypes import int_at_least

    p.add_argument("--config", required=True, type=Path, help="sweep specification (see sweeps/)")
    p.add_argument("--workers", type=int_at_least(1), default=1,
                   help="processes running the study at once, sharing its storage and (on a GPU, 1/N of its memory "
                        "each) one device; logs in <out>/<study>/workers/")


def cmd_sweep(args: argparse.Namespace) -> None:
    from mlpmem_lightning.study.sweep import run_sweep

    if args.workers > 1:
        from mlpmem_lightning.core.resources import resolve_shipped
        from mlpmem_lightning.study.spec import SweepSpec
        from mlpmem_lightning.study.workers import run_workers

        spec = SweepSpec.load(args.config)  # a bad spec is refused here, once, not by every worker
        run_workers(resolve_shipped(args.config), args.workers, spec.study_dir / "workers")
        print(f"results: {spec.study_dir / 'results.csv'}")
        return
    print(f"results: {run_sweep(args.config)}")


def args_lr_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path,
                   help="sweep spec: its decoder_sizes, data and trainer; lr_search: {grid, max_extensions, budget}")


def cmd_lr_search(args: argparse.Namespace) -> None:
    from mlpmem_lightning.study.lr_runner import run_lr_search

    print(f"learning rates: {run_lr_search(args.config)} (reuse: decoder_lr: {{from: PATH}})")


def args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, type=Path, help="results.csv (DESIGN.md schema)")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="split whose losses are fitted")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")


def cmd_report(args: argparse.Namespace) -> None:
    from mlpmem_lightning.study.report import write_report

    print(f"report: {write_report(args.results, args.out, split=args.split, bootstrap=args.bootstrap)}")


# -- demo --------------------------------------------------------------------------------------
def args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where every artifact of the demo goes")
    p.add_argument("--config", type=Path, help="sweep spec to run instead of sweeps/demo.yaml")


def cmd_demo(args: argparse.Namespace) -> None:
    from mlpmem_lightning.study.demo import SPEC, run_demo

    run_demo(args.out, args.config or SPEC)




COMMANDS = (
    Command("sweep", "Optuna study over decoder and memory sizes -> results.csv", args_sweep, cmd_sweep),
    Command("lr-search", "per-rung Optuna search of the decoder learning rate at its budget -> lr.csv",
            args_lr_search, cmd_lr_search),
    Command("report", "results.csv -> power-law fits, plots, report.md", args_report, cmd_report),
    Command("demo", "a small end-to-end study on the embedded corpus (CPU)", args_demo, cmd_demo),
)
