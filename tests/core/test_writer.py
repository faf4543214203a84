"""The artifact writer: a stage never deletes what it did not create (issue 13, item 1), and its other rules.

The four data-loss reproductions run through `mlpmem` in-process; each must now exit 2 with one line and
leave every byte of the folder as it was.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlpmem_lightning.cli import main
from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.core.writer import MARKER, ArtifactWriter
from tests.knn.test_targets import make_datastore


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlpmem: error:")]
    assert exit_info.value.code == 2 and len(errors) == 1, errors
    return errors[0]


def synthetic_ds(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return make_datastore(path, rng.normal(size=(400, 8)), rng.integers(0, 50, 400))


# -- the four reproductions of issue 13, item 1 ---------------------------------------------------------------------
def test_prepare_into_a_folder_of_other_stores_is_refused(small_store, tmp_path, capsys):
    stores = tmp_path / "stores"
    shutil.copytree(small_store, stores / "wiki-small")
    (stores / "notes.txt").write_text("my notes\n")
    before = snapshot(stores)
    error = refused(["prepare", "--corpus", "wiki-summaries", "--out", str(stores)], capsys)
    assert f"{stores} is not empty and holds no partial token_store" in error and "pick another --out" in error
    assert snapshot(stores) == before and not (stores / artifacts.LOCK).exists()


def test_prepare_into_its_own_corpus_folder_is_refused(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"doc{i}.txt").write_text(f"document {i} has a few words of text\n")
    before = snapshot(docs)
    error = refused(["prepare", "--corpus", str(docs), "--out", str(docs)], capsys)
    assert f"--out {docs} is the input {docs}" in error
    assert snapshot(docs) == before


def test_datastore_into_the_decoder_run_is_refused(small_decoder, small_store, tmp_path, capsys):
    dec = shutil.copytree(small_decoder, tmp_path / "dec")
    before = snapshot(dec)
    error = refused(["datastore", "--decoder", str(dec), "--data", str(small_store), "--out", str(dec),
                     "--device", "cpu"], capsys)
    assert f"--out {dec} is the input {dec}" in error
    assert snapshot(dec) == before


def test_targets_into_the_parent_of_the_datastore_is_refused(tmp_path, capsys):
    work = tmp_path / "w"
    ds = synthetic_ds(work / "ds")
    before = snapshot(work)
    error = refused(["targets", "--datastore", str(ds), "--out", str(work), "--k", "8", "--keep", "4",
                     "--device", "cpu"], capsys)
    assert f"--out {work} contains the input {ds}" in error
    assert snapshot(work) == before


# -- the writer's other rules ---------------------------------------------------------------------------------------
def test_an_out_inside_an_input_is_refused(tmp_path, capsys):
    ds = synthetic_ds(tmp_path / "ds")
    before = snapshot(ds)
    error = refused(["targets", "--datastore", str(ds), "--out", str(ds / "targets"), "--k", "8", "--keep", "4",
                     "--device", "cpu"], capsys)
    assert f"--out {ds / 'targets'} lies inside the input {ds}" in error
    assert snapshot(ds) == before


def test_a_partial_artifact_of_another_kind_is_refused(tmp_path):
    out = tmp_path / "out"
    with ArtifactWriter(out, "datastore", {"a": 1}, "x").open(lambda: (out / "keys.npy").write_bytes(b"k")):
        pass  # a build that stopped before its manifest
    with pytest.raises(UserError, match=f"{out} holds a partial datastore, not a knn_targets: pick another --out"):
        with ArtifactWriter(out, "knn_targets", {"b": 2}, "x").open():
            pass
    assert (out / "keys.npy").read_bytes() == b"k"


def test_a_finished_artifact_of_another_kind_is_refused(tmp_path):
    ds = synthetic_ds(tmp_path / "ds")
    with pytest.raises(UserError, match="holds a finished datastore, not a knn_targets: pick another --out"):
        ArtifactWriter(ds, "knn_targets", {"b": 2}, "x").reuse()


def test_only_its_own_partial_run_is_cleared(tmp_path):
    """A marker of this kind (a crashed run, here of other settings) is cleared; the lock alone is no content."""
    out = tmp_path / "out"
    out.mkdir()
    (out / artifacts.LOCK).touch()  # a folder holding nothing but a lock counts as empty
    with ArtifactWriter(out, "thing", {"v": 1}, "x").open(lambda: (out / "old.bin").write_bytes(b"old")) as w:
        w.save_progress({"done": 3})
        assert json.loads((out / MARKER).read_text())["identity"] == {"v": 1}
    with ArtifactWriter(out, "thing", {"v": 1}, "x").open(lambda: pytest.fail("re-allocated a resumable run")) as w:
        assert w.progress()["done"] == 3  # same identity: resumed as it was
    with ArtifactWriter(out, "thing", {"v": 2}, "x").open(lambda: (out / "new.bin").write_bytes(b"new")) as w:
        assert w.progress() is None
        manifest = w.finish(lambda: {"n": 1})
    assert sorted(p.name for p in out.iterdir()) == sorted([artifacts.LOCK, "manifest.json", "new.bin"])
    assert manifest["v"] == 2 and manifest["kind"] == "thing"
    assert ArtifactWriter(out, "thing", {"v": 2}, "x").reuse() == manifest
    with pytest.raises(UserError, match=r"is of another v \(recorded != requested: v: 2 != 3\): choose another"):
        ArtifactWriter(out, "thing", {"v": 3}, "is of another v").reuse()
