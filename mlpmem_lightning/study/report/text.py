"""Formatting shared by report.md's sections and its conclusions: numbers, intervals, markdown tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.architectures import Architecture

PAPER_GAIN = -0.08  # GPT2-large on WikiText-103: 10.42 -> 9.58 test perplexity with a 774M memory (Wei et al.)

WHAT = {"parameters": "parameter count", "compute": "compute"}
FEW_SIZES = 5  # below this many distinct x a fit's bootstrap interval is flagged as unreliable


def base_label() -> str:
    """The baseline's label: every Δ is against it."""
    return architectures.baseline().label


def imitators() -> list[Architecture]:
    """Registered architectures trained to imitate another (decoder+memory imitates the kNN-LM)."""
    return [a for a in architectures.registered() if a.imitates is not None]


def g(v: float, digits: int = 4) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def ci(v: float, interval: tuple[float, float], digits: int = 4) -> str:
    return f"{g(v, digits)} [{g(interval[0], digits)}, {g(interval[1], digits)}]"


def delta(v: float, lo: float, hi: float) -> str:
    if not np.isfinite(v):
        return "—"
    return f"{v:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "")


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def with_study(headers: list[str], rows: list[list], studies: list[str], always: bool = False
               ) -> tuple[list[str], list[list]]:
    """A leading "study" column when the rows come from more than one study (or ``always``, where the rows of one
    study are read beside a table of several): two studies' runs of one size (a decoder-only half and a memory
    half, say) are otherwise indistinguishable rows."""
    if len(set(studies)) < 2 and not always:
        return headers, rows
    return ["study", *headers], [[s, *row] for s, row in zip(studies, rows)]


def span(values: pd.Series, spec: str) -> str:
    """"a to b", or just "a" when all values agree at the printed precision."""
    lo, hi = format(values.min(), spec), format(values.max(), spec)
    return lo if lo == hi else f"{lo} to {hi}"


def capital(text: str) -> str:
    """``text`` with its first letter upper-cased (labels such as "decoder-only" or "kNN-LM" open sentences)."""
    return text[:1].upper() + text[1:]
