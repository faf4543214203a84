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
    p.add_argument("--out", help="the spec's out: where artifacts and <study>/results.csv go (default: the spec's)")
    p.add_argument("--storage", help="the spec's storage: sqlite:///PATH, journal:PATH, postgresql://…, mysql+pymysql://…")
    p.add_argument("--set", dest="overrides", action="append", default=[], type=override, metavar="KEY=VALUE",
                   help="override a spec key, the value read as YAML (repeatable): --set decoder_lr=[1e-3,3e-3] "
                        "--set knn.k=64 --set sampler.name=tpe")


def override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with the value read as YAML (``[1, 2]`` is a list: that key is swept)."""
    import yaml

    from mlpmem_lightning.core.errors import UserError

    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise UserError(f"--set {text!r}: write KEY=VALUE, e.g. --set decoder_lr=3e-3 or --set knn.k=[64,128]")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise UserError(f"--set {text!r}: the value is not valid YAML: quote it or fix its brackets") from None


def spec_overrides(args: argparse.Namespace) -> dict[str, object]:
    """``--set`` pairs, then ``--out`` and ``--storage``: the keys the sweep reads over the spec's."""
    pairs = dict(args.overrides)
    pairs.update({k: v for k, v in (("out", args.out), ("storage", args.storage)) if v is not None})
    return pairs


def cmd_sweep(args: argparse.Namespace) -> None:
    from mlpmem_lightning.study.sweep import run_sweep

    overrides = spec_overrides(args)
    if args.workers > 1:
        from mlpmem_lightning.core.resources import resolve_shipped
        from mlpmem_lightning.study.spec import SweepSpec
        from mlpmem_lightning.study.workers import run_workers

        spec = SweepSpec.load(args.config, overrides)  # a bad spec is refused here, once, not by every worker
        flags = [f for t in args.overrides for f in ("--set", f"{t[0]}={_yaml(t[1])}")]
        flags += [f for k in ("out", "storage") if getattr(args, k) for f in (f"--{k}", getattr(args, k))]
        run_workers(resolve_shipped(args.config), args.workers, spec.study_dir / "workers", flags)
        print(f"results: {spec.study_dir / 'results.csv'}")
        return
    print(f"results: {run_sweep(args.config, overrides=overrides)}")


def _yaml(value: object) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def args_lr_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path,
                   help="sweep spec: its decoder_sizes, data and trainer; lr_search: {grid, max_extensions, budget}")
    from mlpmem_lightning.cli.argtypes import int_at_least

    p.add_argument("--workers", type=int_at_least(1), default=1,
                   help="fits at once, sharing (on a GPU, 1/N of its memory each) one device: the grid of every rung, "
                        "then each rung's extensions; logs in <out>/<study>/workers/lr-*.log")
    p.add_argument("--size", help="search only this rung of the spec's decoder_sizes")
    p.add_argument("--lr", type=float, help="with --size: fit only this LR of the grid (a --workers task)")


def cmd_lr_search(args: argparse.Namespace) -> None:
    from mlpmem_lightning.core.errors import UserError
    from mlpmem_lightning.study.lr_runner import run_lr_search

    if args.lr is not None and args.size is None:
        raise UserError("--lr fits one grid point of one rung: name it with --size")
    path = run_lr_search(args.config, workers=args.workers, size=args.size, lr=args.lr)
    print(f"learning rates: {path} (reuse: decoder_lr: {{from: PATH}})")


def args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", required=True, type=Path, help="results.csv (DESIGN.md schema)")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="split whose losses are fitted")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")


def cmd_report(args: argparse.Namespace) -> None:
    from mlpmem_lightning.study.report import write_report

    print(f"report: {write_report(args.results, args.out, split=args.split, bootstrap=args.bootstrap)}")


def args_collect(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_DIR",
                   help="run directories of fit/validate/test (--trainer.default_root_dir), or folders holding them")
    p.add_argument("--out", required=True, type=Path, help="results.csv to write (DESIGN.md schema)")
    p.add_argument("--study", default="collected", help="the study column of the rows")


def cmd_collect(args: argparse.Namespace) -> None:
    from mlpmem_lightning.study.collect import collect

    rows = collect(args.runs, args.out, args.study)
    print(f"results: {args.out} ({len(rows)} rows from {rows['run'].nunique()} runs)")


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
    Command("collect", "runs made by hand with fit/validate/test -> results.csv", args_collect, cmd_collect),
    Command("demo", "a small end-to-end study on the embedded corpus (CPU)", args_demo, cmd_demo),
)
