"""The `mlpmem` console script: a table of subcommands.

``fit``, ``validate`` and ``test`` are LightningCLI (``--model`` picks the LightningModule, the data is always
``LMDataModule``; :mod:`.lightning`); every other subcommand is a pipeline stage with plain argparse options,
declared as a :class:`~.command.Command` in :mod:`.stages`, :mod:`.study` or :mod:`.tools`. To add one, append
it to ``COMMANDS`` there. Errors a user can fix (``UserError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from mlpmem_lightning.cli import pretrained, stages, study, tools
from mlpmem_lightning.cli.argtypes import Parser
from mlpmem_lightning.cli.command import Command
from mlpmem_lightning.cli.help_cache import asks_for_help, cached_help
from mlpmem_lightning.core.errors import EXIT_USER_ERROR, UserError
from mlpmem_lightning.study.workers import LOG_TIME_ENV

LIGHTNING_COMMANDS = {"fit": "train a model", "validate": "evaluate on valid", "test": "evaluate on test"}
COMMANDS: dict[str, Command] = {c.name: c for c in (*stages.COMMANDS, *pretrained.COMMANDS, *study.COMMANDS,
                                                    *tools.COMMANDS)}
log = logging.getLogger("mlpmem_lightning")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS and asks_for_help(argv):
            print(cached_help(argv, lambda: _run_lightning(argv)), end="")
        elif argv and argv[0] in LIGHTNING_COMMANDS:
            _run_lightning(argv)
        else:
            parser = build_parser(argv[0] if argv else "")  # only the asked command's options: --help stays fast
            args = parser.parse_args(argv)
            if not hasattr(args, "func"):
                parser.print_help()
                sys.exit(EXIT_USER_ERROR)
            args.func(args)
    except UserError as err:
        print(f"mlpmem: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"mlpmem: error: no space left on the device{where}: free some space or pass another --out, then run "
              "the same command again (finished artifacts are reused, the partial one is resumed or rebuilt)",
              file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _run_lightning(argv: list[str]) -> None:
    from mlpmem_lightning.cli.lightning import run_cli

    run_cli(argv)


def _setup_logging() -> None:
    """Our stages log progress at INFO; Lightning keeps its own handler, so no root handler. Sweep workers
    (``MLPMEM_LOG_TIME``, study/workers.py) stamp each line with the time."""
    if not log.handlers:
        handler = logging.StreamHandler()
        stamped = os.environ.get(LOG_TIME_ENV)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s" if stamped else "%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The subcommand parser; with ``only``, options are declared for that subcommand alone (the others are
    listed by name), because declaring some (``targets``' search backends) imports torch, seconds at start-up."""
    parser = Parser(
        prog="mlpmem", description="MLP Memory scaling studies: decoder-only, kNN-LM and decoder + MLP Memory.",
        epilog="Each subcommand has its own --help.")
    sub = parser.add_subparsers(title="subcommands", metavar="COMMAND")
    for name, what in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, add_help=False,
                       help=f"LightningCLI: {what} (--model DecoderLM|KNNLM|MemoryLM, --config …, --print_config)")
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help, description=command.help,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if only is None or only == command.name:
            command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser
