"""``hf:`` keeps a data set's own splits and documents (issue #16 item 4), offline: a local folder laid out like
the hub's WikiText-103 (``README.md`` configs, ``wikitext-103-raw-v1/{train,validation,test}-*.parquet``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlpmem_lightning.data.corpora import load_corpus
from mlpmem_lightning.data.hub import wikitext_articles
from mlpmem_lightning.data.token_store import PrepareSettings, TokenStore, prepare

CONFIG = "wikitext-103-raw-v1"
README = f"""---
configs:
- config_name: {CONFIG}
  data_files:
  - split: train
    path: {CONFIG}/train-*
  - split: validation
    path: {CONFIG}/validation-*
  - split: test
    path: {CONFIG}/test-*
---
"""
WORDS = "memory retrieval decoder scaling token budget the a of and to in is was".split()


def article(rng, title: str) -> list[str]:
    """WikiText rows of one article: blank rows, the title, a section heading, paragraph lines (each ends in \\n)."""
    rows = ["", f" = {title} = \n", ""]
    for s in range(2):
        rows += [f" = = Section {s} = = \n", ""]
        rows += [" " + " ".join(rng.choice(WORDS, size=30)) + " \n" for _ in range(2)]
    return rows


@pytest.fixture(scope="module")
def wikitext(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("hub") / "wikitext"
    (root / CONFIG).mkdir(parents=True)
    (root / "README.md").write_text(README)
    truth = {}
    for split, n in (("train", 6), ("validation", 2), ("test", 3)):
        arts = [article(rng, f"{split.title()} {i}") for i in range(n)]
        rows = pd.DataFrame({"text": [r for a in arts for r in a]})
        rows.to_parquet(root / CONFIG / f"{split}-00000-of-00001.parquet")
        truth[split] = ["".join(a) for a in arts]
    return root, truth


def test_wikitext_articles_start_at_top_level_headings():
    rows = ["", " = A = \n", "", " = = Sub = = \n", " text \n", "", " = B = \n", " more \n", ""]
    assert wikitext_articles(rows) == [" = A = \n = = Sub = = \n text \n", " = B = \n more \n"]


def test_wikitext_parquet_keeps_its_splits_and_articles(wikitext, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root, truth = wikitext
    name = f"hf:{root}:{CONFIG}"
    ds = load_corpus(name, cache_dir=tmp_path / "cache")
    for split, label in (("train", "train"), ("validation", "valid"), ("test", "test")):
        docs = [t for t, s in zip(ds["text"], ds["split"]) if s == label]
        assert docs == truth[split]  # whole articles, rows byte for byte, in order
    manifest = prepare(PrepareSettings(corpus=name, vocab_size=300), tmp_path / "tok", num_proc=1,
                       cache_dir=tmp_path / "cache")
    assert manifest["documents"] == {"train": 6, "valid": 2, "test": 3}
    store, sep = TokenStore(tmp_path / "tok"), manifest["tokenizer"]["separator_id"]
    for split, label in (("train", "train"), ("validation", "valid"), ("test", "test")):
        arr = np.asarray(store.split(label))
        pieces = np.split(arr, np.flatnonzero(arr == sep) + 1)[:-1]
        decoded = [store.tokenizer.decode(p[:-1].tolist()) for p in pieces]
        assert [d.split() for d in decoded] == [a.split() for a in truth[split]]  # the same articles, same split
