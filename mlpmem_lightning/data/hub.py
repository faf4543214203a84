"""``hf:NAME[:CONFIG]`` corpora: a hub data set with its own splits and documents (issue #16, the papers' protocol).

Numbers comparable with the papers need the benchmark's own split (WikiText-103's validation and test
articles), not a re-split of the pooled rows, and whole documents, not lines: WikiText-103 stores one line per
row, and an article starts at a top-level heading row `` = Title = `` (sections are `` = = Section = = ``).

- Each hub split keeps its name (``validation`` is the store's ``valid``) in a ``split`` column;
  :func:`own_splits` hands them to ``prepare`` when train, valid and test are all there (else the rows are
  pooled and split by seed, as for every other corpus).
- Data sets named in :data:`DOCUMENTS` have their rows joined into documents (the rows' text is kept byte for
  byte, line ends included); others keep one document per non-empty row.

``NAME`` may also be a local folder laid out like a hub repository (``README.md`` with ``configs:``, or
``CONFIG/{train,validation,test}-*.parquet``), which is how the tests run offline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpmem_lightning.core.errors import UserError

if TYPE_CHECKING:
    import datasets

LAYOUT_VERSION = 2  # 1: every split pooled, one document per row; 2: own splits, documents joined
SPLIT_NAMES = {"train": "train", "validation": "valid", "valid": "valid", "dev": "valid", "test": "test"}
_ARTICLE = re.compile(r"^ = [^=].* = \s*$")  # a top-level WikiText heading; sections have "= =" on each side


def wikitext_articles(rows: Sequence[str]) -> list[str]:
    """WikiText rows joined into articles: a new article at each top-level heading; blank articles dropped."""
    docs: list[list[str]] = []
    for row in rows:
        if _ARTICLE.match(row) or not docs:
            docs.append([])
        docs[-1].append(row)
    return [text for text in ("".join(d) for d in docs) if text.strip()]


def _rows(rows: Sequence[str]) -> list[str]:
    return [r for r in rows if r and r.strip()]


DOCUMENTS: dict[str, Callable[[Sequence[str]], list[str]]] = {"wikitext": wikitext_articles}


def parse(name: str) -> tuple[str, str | None]:
    """``hf:NAME[:CONFIG]`` -> (NAME, CONFIG)."""
    ident, _, config = name[3:].partition(":")
    return ident, config or None


def documents_of(ident: str) -> str:
    """How rows become documents for this data set: a key of :data:`DOCUMENTS`, or ``rows``."""
    base = Path(ident).name.lower()
    return base if base in DOCUMENTS else "rows"


def identity(name: str) -> dict[str, Any]:
    ident, config = parse(name)
    return {"kind": "hf", "name": name, "dataset": ident, "config": config, "layout": LAYOUT_VERSION,
            "documents": documents_of(ident)}


def load_hf(name: str, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Every split of a hub data set as documents, with ``text``, ``source`` and ``split`` columns."""
    import datasets

    ident, config = parse(name)
    try:
        loaded = datasets.load_dataset(ident, config, cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as exc:  # offline, unknown, gated...: the fix is the same
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"could not load {name} from the Hugging Face hub ({type(exc).__name__}: {first}); "
                        "the hub may be unreachable: save it as .parquet/.jsonl and pass that folder") from None
    join = DOCUMENTS.get(documents_of(ident), _rows)
    texts: list[str] = []
    sources: list[str] = []
    splits: list[str] = []
    for split, ds in (loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("all", loaded)]):
        if "text" not in ds.column_names:
            raise UserError(f"{name} split {split!r} has no 'text' column (has {ds.column_names}); "
                            "save it with one as .jsonl and pass that")
        docs = join(ds["text"])
        texts += docs
        sources += [f"{name}/{split}"] * len(docs)
        splits += [SPLIT_NAMES.get(split, split)] * len(docs)
    if not texts:
        raise UserError(f"{name} has no non-empty text: choose another data set")
    return datasets.Dataset.from_dict({"text": texts, "source": sources, "split": splits})


def own_splits(docs: datasets.Dataset, max_documents: int | None = None) -> dict[str, datasets.Dataset] | None:
    """The corpus's own train/valid/test (each cut to ``max_documents``), or None when it has not all three."""
    if "split" not in docs.column_names:
        return None
    labels = np.asarray(docs["split"])
    if not {"train", "valid", "test"} <= set(labels.tolist()):
        return None
    return {s: docs.select(np.flatnonzero(labels == s)[:max_documents]) for s in ("train", "valid", "test")}
