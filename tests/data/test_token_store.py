"""`prepare`: splits, dtype, round trip, reuse, crash recovery and bad input."""

import json
import shutil

import numpy as np
import pytest

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.token_store import PrepareSettings, TokenStore, prepare, split_documents

WORDS = ("memory retrieval neighbour decoder scaling law token budget parameter compute "
         "the a of and to in is was for on that with as by").split()


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("corpus")
    for i in range(60):
        text = " ".join(rng.choice(WORDS, size=rng.integers(40, 200))) + ".\n"
        (d / f"doc{i:03d}.txt").write_text(text)
    return d


def settings(corpus_dir, **kw):
    return PrepareSettings(corpus=str(corpus_dir), vocab_size=300, **kw)


def test_store_round_trips_documents(corpus_dir, tmp_path):
    manifest = prepare(settings(corpus_dir), tmp_path / "tok", num_proc=1)
    store = TokenStore(tmp_path / "tok")
    parts = split_documents(60, 0.05, 0.05, 0)
    docs = [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]
    sep = manifest["tokenizer"]["separator_id"]
    for split in ("train", "valid", "test"):
        arr = store.split(split)
        assert arr.dtype == np.uint16 and arr.ndim == 1
        assert len(arr) == manifest["tokens"][split] > 0
        # decoding each separator-terminated piece gives back the split's documents, in order
        pieces = np.split(np.asarray(arr), np.flatnonzero(arr == sep) + 1)[:-1]
        decoded = [store.tokenizer.decode(p[:-1].tolist()) for p in pieces]
        assert decoded == [docs[i] for i in parts[split]]
    assert sum(manifest["documents"].values()) == 60


def test_split_is_a_seeded_partition():
    a = split_documents(100, 0.1, 0.2, seed=1)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(100))
    assert (len(a["valid"]), len(a["test"]), len(a["train"])) == (10, 20, 70)
    assert all(np.array_equal(a[k], split_documents(100, 0.1, 0.2, seed=1)[k]) for k in a)
    assert not np.array_equal(a["test"], split_documents(100, 0.1, 0.2, seed=2)["test"])


def test_rerun_reuses_and_crash_rebuilds_identically(corpus_dir, tmp_path, monkeypatch):
    def files(path):
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and p.name != ".lock"}

    out = tmp_path / "tok"
    first = prepare(settings(corpus_dir), out, num_proc=1)
    mtime = (out / "train.npy").stat().st_mtime_ns
    assert prepare(settings(corpus_dir), out, num_proc=1) == first  # reused, not rebuilt
    assert (out / "train.npy").stat().st_mtime_ns == mtime
    def killed(*args):
        raise RuntimeError("killed")

    crashed = tmp_path / "crashed"
    with monkeypatch.context() as patch:  # a crash just before the manifest: incomplete, with the writer's marker
        patch.setattr(artifacts, "write_manifest", killed)
        with pytest.raises(RuntimeError, match="killed"):
            prepare(settings(corpus_dir), crashed, num_proc=1)
    (crashed / "valid.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="incomplete"):
        TokenStore(crashed)
    prepare(settings(corpus_dir), crashed, num_proc=2)
    assert files(crashed) == files(out)


def test_other_settings_into_same_dir_is_refused(corpus_dir, tmp_path):
    prepare(settings(corpus_dir), tmp_path / "tok", num_proc=1)
    with pytest.raises(UserError, match="other settings.*seed"):
        prepare(settings(corpus_dir, seed=3), tmp_path / "tok", num_proc=1)


def test_too_few_documents(tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    for i in range(2):
        (d / f"{i}.txt").write_text("only two documents here")
    with pytest.raises(UserError, match="at least 3"):
        prepare(PrepareSettings(corpus=str(d), vocab_size=300), tmp_path / "tok")
    assert not (tmp_path / "tok" / "manifest.json").exists()


def test_truncated_split_is_refused(corpus_dir, tmp_path):
    prepare(settings(corpus_dir), tmp_path / "tok", num_proc=1)
    path = tmp_path / "tok" / "train.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="train"):
        TokenStore(tmp_path / "tok").split("train")


def test_manifest_records_inputs(corpus_dir, tmp_path):
    m = json.loads((prepare(settings(corpus_dir), tmp_path / "tok", num_proc=1) and
                    (tmp_path / "tok" / "manifest.json")).read_text())
    assert m["kind"] == "token_store" and m["settings"]["vocab_size"] == 300
    assert m["vocab_size"] <= 300 and len(m["fingerprint"]) == 16 and m["dtype"] == "uint16"
    shutil.rmtree(tmp_path / "tok")
