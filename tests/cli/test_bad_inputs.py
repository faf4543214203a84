"""The bad-input catalogue (docs/bad-inputs.md, "Bad inputs"): one row per mistake, each run through `mlpmem`.

Every row must end with exit status 2 and exactly one line ``mlpmem: error: …`` that contains the
row's message; the documented table is checked against ``CATALOGUE`` so the two cannot drift apart.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mlpmem_lightning.cli import main
from mlpmem_lightning.core import artifacts
from tests.cli.catalogue import (
    ROOT,
    TRAINER,
    Case,
    _ckpt,
    _copy,
    _edit_manifest,
    _fit,
    _foreign_ckpt,
    _nan_ds,
    _resized_ckpt,
    _results,
    _spec,
    _text,
    _truncate,
)

CATALOGUE_DOC = ROOT / "docs" / "bad-inputs.md"


BASE = [
    # -- corpus and prepare
    Case("prepare", "unknown corpus name", "unknown corpus 'no-such-corpus'",
         lambda t, fx: ["prepare", "--corpus", "no-such-corpus", "--out", str(t / "tok")]),
    Case("prepare", "local corpus of an unsupported file type", "unsupported file type",
         lambda t, fx: ["prepare", "--corpus", str(_text(t / "c.csv", "a,b\n")), "--out", str(t / "tok")]),
    Case("prepare", "a .jsonl line without a string \"text\"", "needs a string field",
         lambda t, fx: ["prepare", "--corpus", str(_text(t / "c.jsonl", '{"title": "x"}\n')), "--out", str(t / "tok")]),
    Case("prepare", "a text file that is not UTF-8", "is not UTF-8",
         lambda t, fx: ["prepare", "--corpus", str(_text(t / "c.txt", b"caf\xe9 au lait\n")), "--out", str(t / "tok")]),
    Case("prepare", "a corpus with no non-empty document", "no non-empty document",
         lambda t, fx: ["prepare", "--corpus", str(_text(t / "c.txt", "\n \n")), "--out", str(t / "tok")]),
    Case("token store", "--out holds a token store built with other settings", "built with other settings",
         lambda t, fx: ["prepare", "--corpus", "wiki-summaries", "--max-documents", "2000", "--vocab-size", "999",
                        "--out", str(fx.store)]),
    Case("token store", "the token store directory does not exist", "does not exist",
         lambda t, fx: ["datastore", "--decoder", str(fx.decoder), "--data", str(t / "missing"),
                        "--out", str(t / "d")]),
    # -- configs and sizes
    Case("configs", "an unknown decoder size", "unknown decoder size '7m'",
         lambda t, fx: _fit(fx, t / "run", "--model.size", "7m")),
    Case("configs", "seq_len longer than the model's context", "exceeds the model's context",
         lambda t, fx: _fit(fx, t / "run", "--data.seq_len", "5000")),
    Case("configs", "a model vocabulary that differs from the tokenizer's", "the model's vocab_size is 100",
         lambda t, fx: _fit(fx, t / "run", "--model.vocab_size", "100")),
    # -- checkpoints
    Case("checkpoints", "a checkpoint of another architecture (an MLP Memory's) as --decoder",
         "is not a DecoderLM checkpoint",
         lambda t, fx: ["datastore", "--decoder", str(_foreign_ckpt(t, fx)), "--data", str(fx.store),
                        "--out", str(t / "d")]),
    Case("checkpoints", "a checkpoint whose weights do not fit its recorded size", "does not fit a 800k decoder",
         lambda t, fx: ["datastore", "--decoder", str(_resized_ckpt(t, fx)), "--data", str(fx.store),
                        "--out", str(t / "d")]),
    Case("checkpoints", "a truncated checkpoint", "it is truncated or not a checkpoint",
         lambda t, fx: ["datastore", "--decoder", str(_cut_ckpt(t, fx)), "--data", str(fx.store),
                        "--out", str(t / "d")]),
    Case("checkpoints", "a decoder trained on another token store", "was trained on token store",
         lambda t, fx: ["datastore", "--decoder", str(fx.decoder),
                        "--data", str(_edit_manifest(_copy(fx.store, t / "other"), fingerprint="0000")),
                        "--out", str(t / "d")]),
    # -- datastore and index
    Case("datastore", "--out holds a datastore of other settings", "is a datastore of another decoder",
         lambda t, fx: ["datastore", "--decoder", str(fx.decoder), "--data", str(fx.store),
                        "--out", str(_copy(fx.datastore, t / "ds")), "--layer", "0"]),
    Case("datastore", "a truncated keys.npy", "bytes but its manifest records",
         lambda t, fx: ["targets", "--datastore", str(_truncate_keys(t, fx)), "--out", str(t / "tg"), "--k", "8"]),
    Case("datastore", "a datastore without its manifest (crashed mid-build)", "incomplete",
         lambda t, fx: ["targets", "--datastore", str(_unfinished(t, fx)), "--out", str(t / "tg")]),
    Case("datastore", "NaN/inf keys", "NaN/inf",
         lambda t, fx: ["targets", "--datastore", str(_nan_ds(t)), "--out", str(t / "tg"), "--k", "8", "--keep", "4",
                        "--index", "ivfflat", "--nlist", "4", "--backend", "faiss"]),
    Case("index", "IVFPQ sub-quantizers that do not divide d", "must divide d",
         lambda t, fx: ["targets", "--datastore", str(fx.datastore), "--out", str(t / "tg"), "--index", "ivfpq",
                        "--m", "7", "--backend", "faiss"]),
    Case("index", "more IVF lists than keys", "nlist=99999999 must be in",
         lambda t, fx: ["targets", "--datastore", str(fx.datastore), "--out", str(t / "tg"), "--index", "ivfflat",
                        "--nlist", "99999999", "--backend", "faiss"]),
    # -- targets
    Case("targets", "k not smaller than the datastore", "must be in [1,",
         lambda t, fx: ["targets", "--datastore", str(fx.datastore), "--out", str(t / "tg"), "--k", "99999999"]),
    Case("targets", "K (--keep) larger than k", "--keep 64 must be in [1, k=8]",
         lambda t, fx: ["targets", "--datastore", str(fx.datastore), "--out", str(t / "tg"), "--k", "8",
                        "--keep", "64"]),
    Case("targets", "targets of another datastore given to MemoryLM", "were built from datastore",
         lambda t, fx: ["fit", *TRAINER, "--model", "MemoryLM", "--model.decoder", str(fx.decoder),
                        "--data.token_store", str(fx.store), "--data.seq_len", "128",
                        "--data.targets", str(_edit_manifest(_copy(fx.targets, t / "tg"), datastore_fingerprint="x")),
                        "--trainer.default_root_dir", str(t / "mem")]),
    # -- sweep specs
    Case("sweep", "a spec with an unknown key", "unknown keys bogus",
         lambda t, fx: ["sweep", "--config", str(_spec(t, bogus=1))]),
    Case("sweep", "λ outside [0, 1] in a spec", "must lie in [0, 1]",
         lambda t, fx: ["sweep", "--config", str(_spec(t, **{"lambda": 1.5}))]),
    Case("sweep", "storage that cannot be opened", "cannot open sweep storage",
         lambda t, fx: ["sweep", "--config", str(_spec(t, storage="sqlite:////nonexistent-dir/x/o.db"))]),
    # -- results and report
    Case("results", "a results file that does not exist", "does not exist: run `mlpmem sweep`",
         lambda t, fx: ["report", "--results", str(t / "missing.csv"), "--out", str(t / "r")]),
    Case("results", "a results file without a required column", "lacks required columns loss",
         lambda t, fx: ["report", "--results", str(_results(t, drop="loss")), "--out", str(t / "r")]),
    Case("results", "rows from two token stores in one results file", "mixes rows from token stores",
         lambda t, fx: ["report", "--results", str(_results(t, stores=2)), "--out", str(t / "r")]),
    # -- training
    Case("training", "the loss becomes NaN/inf (learning rate far too high)", "training loss became",
         lambda t, fx: _fit(fx, t / "run", "--model.lr", "1e30", "--model.max_tokens", "8192")),
]


def _catalogue() -> list[Case]:
    """The rows of #12 and before, then one list per area of the reliability issue (#13), each in its module."""
    from tests.cli import (
        cases_artifacts,
        cases_fit,
        cases_habits,
        cases_memory,
        cases_pretrained,
        cases_study,
        cases_workflow,
    )

    return (BASE + cases_fit.CASES + cases_artifacts.CASES + cases_study.CASES + cases_workflow.CASES
            + cases_habits.CASES + cases_pretrained.CASES + cases_memory.CASES)


def _cut_ckpt(t: Path, fx) -> Path:
    shutil.copy(_ckpt(fx), t / "cut.ckpt")
    return _truncate(t / "cut.ckpt")


def _truncate_keys(t: Path, fx) -> Path:
    ds = _copy(fx.datastore, t / "ds")
    _truncate(ds / "keys.npy", 0.3)
    return ds


def _unfinished(t: Path, fx) -> Path:
    ds = _copy(fx.datastore, t / "ds")
    (ds / "manifest.json").unlink()
    return ds


CATALOGUE = _catalogue()


@pytest.fixture(scope="module")
def fx(small_store, small_decoder, small_datastore, small_targets):
    return SimpleNamespace(store=small_store, decoder=small_decoder, datastore=small_datastore, targets=small_targets)


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlpmem: error:")]
    return exit_info.value.code, errors


@pytest.mark.parametrize("case", CATALOGUE, ids=[f"{c.stage}: {c.wrong}" for c in CATALOGUE])
def test_bad_input_gets_one_line_and_exit_2(case, fx, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the experiments/ configs are relative
    code, errors = run_main(case.argv(tmp_path, fx), capsys)
    assert code == 2 and len(errors) == 1 and case.message in errors[0], errors


def test_nan_loss_keeps_the_last_good_checkpoint(fx, tmp_path, capsys, monkeypatch):
    """Training stops with the one-line error; no checkpoint with non-finite weights is written."""
    monkeypatch.chdir(ROOT)
    code, errors = run_main(_fit(fx, tmp_path / "run", "--model.lr", "1e30", "--model.max_tokens", "8192",
                                 "--trainer.val_check_interval", "1"), capsys)
    assert code == 2 and "the last good checkpoint is kept" in errors[0]
    for ckpt in (tmp_path / "run").rglob("*.ckpt"):
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), ckpt


def test_disk_full_is_one_line_and_leaves_nothing_complete(tmp_path, capsys, monkeypatch):
    """A write failing with ENOSPC (simulated) ends with the one-line error; the artifact stays incomplete."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "tok" / "train.npy"))

    monkeypatch.setattr(artifacts, "fsync_rename", full)
    docs = "".join(json.dumps({"text": f"document {i} has some text"}) + "\n" for i in range(60))
    code, errors = run_main(["prepare", "--corpus", str(_text(tmp_path / "c.jsonl", docs)),
                             "--vocab-size", "300", "--out", str(tmp_path / "tok")], capsys)
    assert code == 2 and "no space left on the device writing" in errors[0]
    assert not artifacts.is_complete(tmp_path / "tok")


def test_readme_table_lists_every_row():
    table = CATALOGUE_DOC.read_text().split("## Bad inputs", 1)[1].split("\n## ", 1)[0]
    rows = [re.split(r"\s*\|\s*", line.strip("| ")) for line in table.splitlines() if line.startswith("| ")]
    documented = sorted((r[0], r[1]) for r in rows if r[0] != "stage")  # every table's header row starts "stage"
    assert documented == sorted([(c.stage, c.wrong) for c in CATALOGUE] + [
        ("training", "NaN/inf loss: the last good checkpoint is kept"), ("any", "disk full while writing")])
    assert len(rows) >= 25
