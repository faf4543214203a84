"""Shared fixtures (the embedded corpus prepared once per session, a small decoder, its datastore and targets), and
the ``unit`` / ``integration`` markers.

A test is ``integration`` when it needs a built artifact (any fixture below, directly or through another) or runs
whole stages end to end (its module says so with ``pytestmark``); every other test is ``unit``. `make test-unit`
runs the unit tests alone, so a broken fixture cannot hide the state of the rest.
"""

import pytest

from mlpmem_lightning.data.token_store import PrepareSettings, prepare
from tests.helpers import EXP

ARTIFACT_FIXTURES = {"wiki_store", "small_store", "small_decoder", "small_datastore", "small_targets"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if "integration" not in marks and ARTIFACT_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.unit)
        elif "integration" not in marks:
            item.add_marker(pytest.mark.integration)



@pytest.fixture(scope="session")
def wiki_store(tmp_path_factory):
    """The default corpus as a token store (fetched once into $MLPMEM_CACHE, then cached)."""
    out = tmp_path_factory.mktemp("tokens") / "wiki-summaries"
    prepare(PrepareSettings(corpus="wiki-summaries"), out)
    return out


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    """The first 2,000 documents of the embedded corpus: small enough for exact kNN on 2 CPU cores."""
    out = tmp_path_factory.mktemp("tokens") / "wiki-small"
    prepare(PrepareSettings(corpus="wiki-summaries", vocab_size=4096, max_documents=2000), out)
    return out


@pytest.fixture(scope="session")
def small_decoder(small_store, tmp_path_factory):
    """A 200k decoder fitted for 150 steps of 16 x 128 tokens on ``small_store``: its run directory."""
    from mlpmem_lightning.cli.lightning import run_cli

    run = tmp_path_factory.mktemp("runs") / "decoder"
    run_cli(["fit", "--config", str(EXP / "trainer/cpu.yaml"), "--config", str(EXP / "model/decoder_200k.yaml"),
             "--data.token_store", str(small_store), "--data.seq_len", "128", "--data.batch_size", "16",
             "--model.max_tokens", str(150 * 16 * 128), "--trainer.default_root_dir", str(run),
             "--trainer.enable_progress_bar", "false"])
    return run


@pytest.fixture(scope="session")
def small_datastore(small_decoder, small_store, tmp_path_factory):
    """The train-split datastore of ``small_decoder`` (seq_len 128, float16 keys, d=64)."""
    from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore

    out = tmp_path_factory.mktemp("ds") / "train"
    build_datastore(small_decoder, small_store, out, DatastoreSettings(batch_size=16), device="cpu")
    return out


@pytest.fixture(scope="session")
def small_targets(small_datastore, tmp_path_factory):
    """kNN targets of ``small_datastore``: IVFFlat (exact search is too slow for CI), k=64, K=32."""
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets

    out = tmp_path_factory.mktemp("targets") / "ivf"
    build_targets(small_datastore, out, TargetSettings(index="ivfflat", k=64, keep=32, nprobe=16), device="cpu")
    return out


@pytest.fixture(scope="session")
def memory_run(small_targets, small_decoder, small_store, tmp_path_factory):
    """A memory fitted for 200 steps on ``small_targets`` (its run directory): shared by every module that needs one
    (each test that writes under it copies it first)."""
    from mlpmem_lightning.cli.lightning import run_cli
    from tests.lightning.test_memory_lm import SEQ, mem_args

    run = tmp_path_factory.mktemp("mem") / "run"
    run_cli(mem_args("fit", small_decoder, small_store, small_targets, run, "--model.max_tokens", str(200 * 16 * SEQ)))
    return run
