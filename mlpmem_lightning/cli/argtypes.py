"""Argparse types of the pipeline's options: a bad number or device is refused at parse time, in one line.

argparse prints ``argument --batch-size: <message>``, which ``mlpmem`` turns into ``mlpmem: error: …`` (the
parser's ``error`` raises :class:`UserError`), so no stage starts on a size of -4 or a temperature of nan. Each
message names the fix. Torch is imported only to check a CUDA device.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from mlpmem_lightning.core.errors import UserError


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are the CLI's one-line ``mlpmem: error:`` (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number: pass a real value")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """A whole number >= ``low`` (``positive`` = 1, ``non_negative`` = 0)."""
    def parse(text: str) -> int:
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}: pass a whole number of at least {low}")
        return value
    parse.__name__ = f"int>={low}"
    return parse


positive = int_at_least(1)
non_negative = int_at_least(0)


def positive_float(text: str) -> float:
    """A finite number > 0 (a temperature)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be > 0: pass a positive number")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a sampling temperature, where 0 means greedy)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be >= 0 (0 is greedy): pass a number >= 0")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1] (λ)."""
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} must lie in [0, 1]")
    return value


def top_p(text: str) -> float:
    """A nucleus threshold in (0, 1]."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} must lie in (0, 1]: 1 keeps every token")
    return value


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (a CUDA device must exist here), or ``mps``."""
    kind, _, index = text.partition(":")
    if kind in ("auto", "cpu", "mps") and not index:
        return text
    if kind != "cuda" or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: pass auto, cpu, cuda or cuda:N")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise argparse.ArgumentTypeError(f"{text}: no CUDA device is visible here: pass --device cpu (or auto)")
    if index and int(index) >= count:
        raise argparse.ArgumentTypeError(f"{text}: only {count} CUDA device(s) here (cuda:0 … cuda:{count - 1})")
    return text
