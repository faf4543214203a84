"""One subcommand of the console script: its name, its one-line help, its options and what it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def csv_list(text: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]`` (empty items dropped)."""
    return [x for x in text.split(",") if x]
