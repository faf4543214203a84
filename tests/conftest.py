"""Shared fixtures: the embedded corpus (wiki-summaries) prepared once per session."""

import pytest

from mlpmem_lightning.token_store import PrepareSettings, prepare


@pytest.fixture(scope="session")
def wiki_store(tmp_path_factory):
    """The default corpus as a token store (fetched once into $MLPMEM_CACHE, then cached)."""
    out = tmp_path_factory.mktemp("tokens") / "wiki-summaries"
    prepare(PrepareSettings(corpus="wiki-summaries"), out)
    return out
