"""Bad-input catalogue rows for artifacts and stages: prepare, datastore, targets, index, generate, export (issue #13).

Each `Case` here is run by `tests/cli/test_bad_inputs.py` and listed in docs/bad-inputs.md. Broken artifacts are
built cheaply: a folder of symlinks to a fixture's arrays plus an edited manifest (`_linked`), so nothing large is
copied; a file that must differ is written for real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.cli.catalogue import TRAINER, Case, _ckpt, _text


def _linked(src: Path, dst: Path, manifest=None, **changes) -> Path:
    """``dst`` holding symlinks to ``src``'s files and a copy of its manifest with ``changes`` (or ``manifest``)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "manifest.json":
            (dst / f.name).symlink_to(f.resolve())
    m = json.loads((src / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps({**m, **changes} if manifest is None else manifest))
    return dst


def _replaced(linked: Path, name: str, change) -> Path:
    """Replace the symlink ``name`` in a linked folder by a real file: ``change`` applied to the array."""
    arr = np.load(linked / name)
    (linked / name).unlink()
    np.save(linked / name, change(arr).astype(arr.dtype))
    return linked


def _without(src: Path, dst: Path, key: str) -> Path:
    m = json.loads((src / "manifest.json").read_text())
    return _linked(src, dst, manifest={k: v for k, v in m.items() if k != key})


def _user_folder(t: Path) -> Path:
    """A folder holding another token store and the user's notes (item 1's first reproduction)."""
    (t / "stores" / "other").mkdir(parents=True)
    _text(t / "stores" / "other" / "manifest.json", '{"kind": "token_store"}')
    _text(t / "stores" / "notes.txt", "mine")
    return t / "stores"


def _docs(t: Path, n: int = 60) -> Path:
    return _text(t / "c.jsonl", "".join(json.dumps({"text": f"document {i} has some text"}) + "\n" for i in range(n)))


def _edited_corpus_store(t: Path) -> list[str]:
    """A token store of a local corpus, then the corpus edited: the same prepare must not reuse the store."""
    from mlpmem_lightning.data.token_store import PrepareSettings, prepare

    corpus = _docs(t)
    prepare(PrepareSettings(corpus=str(corpus), vocab_size=300), t / "tok")
    corpus.write_text(corpus.read_text().replace("document 7 ", "document seven "))
    return ["prepare", "--corpus", str(corpus), "--vocab-size", "300", "--out", str(t / "tok")]


def _split_datastore(t: Path, fx, split: str = "valid") -> Path:
    return _linked(fx.datastore, t / f"ds-{split}", split=split,
                   settings={**json.loads((fx.datastore / "manifest.json").read_text())["settings"], "split": split})


def _targets_of_split(t: Path, fx) -> Path:
    return _linked(fx.targets, t / "tg", datastore=str(_split_datastore(t, fx)))


def _loop(t: Path) -> Path:
    (t / "a").symlink_to(t / "b")
    (t / "b").symlink_to(t / "a")
    return t / "a"


def _read_only(t: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0o555 folder: the read-only case is covered by tests/core/test_content.py")
    (t / "ro").mkdir()
    (t / "ro").chmod(0o555)
    return t / "ro" / "tok"


def _no_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


def _memory_fit(fx, t: Path, targets: Path) -> list[str]:
    return ["fit", *TRAINER, "--model", "MemoryLM", "--model.decoder", str(fx.decoder),
            "--data.token_store", str(fx.store), "--data.seq_len", "128", "--data.targets", str(targets),
            "--trainer.default_root_dir", str(t / "mem")]


def _ds(fx, t: Path, *extra: str) -> list[str]:
    return ["datastore", "--decoder", str(fx.decoder), "--data", str(fx.store), "--out", str(t / "d"), *extra]


def _tg(fx, t: Path, *extra: str) -> list[str]:
    return ["targets", "--datastore", str(fx.datastore), "--out", str(t / "tg"), *extra]


def _gen(fx, *extra: str) -> list[str]:
    return ["generate", "--decoder", str(fx.decoder), "--prompt", "The", "--max-new-tokens", "2", *extra]


def _prep(t: Path, *extra: str) -> list[str]:
    return ["prepare", "--corpus", "wiki-summaries", "--max-documents", "300", "--out", str(t / "tok"), *extra]


def _num(stage: str, flag: str, value: str, rule: str, argv, note: str = "") -> Case:
    """A number refused at parse time: ``argv(fx, t, flag, value)`` is the otherwise valid command."""
    return Case(stage, f"{flag} {value}{note}", f"argument {flag}: {value} {rule}",
                lambda t, fx: argv(fx, t, flag, value))


CASES: list = [
    # -- item 1: a stage never deletes what it did not create
    Case("prepare", "--out a folder holding other token stores and the user's files",
         "holds no partial token_store (no in_progress.json)",
         lambda t, fx: ["prepare", "--corpus", "wiki-summaries", "--out", str(_user_folder(t))]),
    Case("prepare", "--out the local corpus folder itself", "is the input",
         lambda t, fx: ["prepare", "--corpus", str(_docs(t / "docs").parent), "--out", str(t / "docs")]),
    Case("datastore", "--out the decoder's run directory", "is the input",
         lambda t, fx: ["datastore", "--decoder", str(fx.decoder), "--data", str(fx.store), "--out", str(fx.decoder)]),
    Case("targets", "--out the folder that holds the datastore", "contains the input",
         lambda t, fx: ["targets", "--datastore", str(_linked(fx.datastore, t / "w" / "ds")), "--out", str(t / "w")]),
    # -- item 5: the split a kNN-LM evaluates, the split MemoryLM trains on
    Case("knn-lm", "a kNN-LM evaluated on the split its datastore was built from",
         "was built from the valid split, the split being evaluated",
         lambda t, fx: ["validate", *TRAINER, "--model", "KNNLM", "--model.decoder", str(fx.decoder),
                        "--model.datastore", str(_split_datastore(t, fx)), "--data.token_store", str(fx.store),
                        "--data.seq_len", "128", "--trainer.default_root_dir", str(t / "knn")]),
    Case("targets", "MemoryLM given targets of a datastore of another split than train",
         "come from a datastore of the valid split", lambda t, fx: _memory_fit(fx, t, _targets_of_split(t, fx))),
    # -- item 6 (and 10, 14): numbers and devices refused at parse time
    _num("datastore", "--batch-size", "-4", "must be >= 1", _ds),
    _num("datastore", "--batch-size", "0", "must be >= 1", _ds),
    _num("datastore", "--seq-len", "-8", "must be >= 1", _ds),
    Case("datastore", "--device bogus", "argument --device: unknown device 'bogus'",
         lambda t, fx: _ds(fx, t, "--device", "bogus")),
    Case("datastore", "--device cuda on a machine without CUDA", "no CUDA device is visible here",
         lambda t, fx: _no_cuda() or _ds(fx, t, "--device", "cuda")),
    _num("targets", "--chunk", "0", "must be >= 1", _tg),
    _num("targets", "--chunk", "-5", "must be >= 1", _tg),
    _num("targets", "--mass-curve", "-5", "must be >= 1", _tg),
    _num("targets", "--mass-curve", "0", "must be >= 1", _tg, " (it built the full targets)"),
    _num("prepare", "--num-proc", "-1", "must be >= 1", lambda fx, t, *a: _prep(t, *a)),
    _num("prepare", "--seed", "-1", "must be >= 0", lambda fx, t, *a: _prep(t, *a)),
    _num("generate", "--top-p", "0", "must lie in (0, 1]", lambda fx, t, *a: _gen(fx, *a)),
    _num("generate", "--k", "0", "must be >= 1", lambda fx, t, *a: _gen(fx, *a)),
    _num("generate", "--knn-temperature", "0", "must be > 0", lambda fx, t, *a: _gen(fx, *a)),
    _num("generate", "--knn-temperature", "-5", "must be > 0", lambda fx, t, *a: _gen(fx, *a)),
    _num("generate", "--knn-temperature", "nan", "is not a finite number", lambda fx, t, *a: _gen(fx, *a)),
    # -- item 7: content checked against the manifest
    Case("token store", "a local corpus edited after its token store was built", "recorded != requested: source.sha256",
         lambda t, fx: _edited_corpus_store(t)),
    Case("token store", "train.npy replaced by another array of the same length",
         "train.npy does not match its manifest's content hash",
         lambda t, fx: ["datastore", "--decoder", str(fx.decoder), "--out", str(t / "d"), "--data",
                        str(_replaced(_linked(fx.store, t / "tok"), "train.npy", lambda a: a[::-1]))]),
    Case("targets", "probs.npy scaled x10", "probs.npy does not match its manifest's content hash",
         lambda t, fx: _memory_fit(fx, t, _replaced(_linked(fx.targets, t / "tg"), "probs.npy", lambda a: a * 10))),
    # -- item 14: one line instead of a traceback
    Case("datastore", "a manifest.json that is a JSON list", "holds a JSON list, not a manifest object",
         lambda t, fx: ["targets", "--datastore", str(_linked(fx.datastore, t / "ds", manifest=[])),
                        "--out", str(t / "tg")]),
    Case("datastore", "a manifest.json without a key it needs (N)", "manifest.json lacks N",
         lambda t, fx: ["targets", "--datastore", str(_without(fx.datastore, t / "ds", "N")), "--out", str(t / "tg")]),
    Case("export", "a decoder checkpoint as --checkpoint", "is a DecoderLM checkpoint, not a MemoryLM's",
         lambda t, fx: ["export", "--checkpoint", str(_ckpt(fx)), "--out", str(t / "mem")]),
    Case("export", "a --checkpoint that does not exist", "does not exist or is not a file",
         lambda t, fx: ["export", "--checkpoint", str(t / "missing.ckpt"), "--out", str(t / "mem")]),
    Case("generate", "--memory a decoder checkpoint", "is a DecoderLM checkpoint, not a MemoryLM's",
         lambda t, fx: _gen(fx, "--memory", str(_ckpt(fx)))),
    Case("prepare", "--out a file", "is a file, not a directory",
         lambda t, fx: _prep(t)[:-2] + ["--out", str(_text(t / "f.txt", "x"))]),
    Case("prepare", "--out a symlink loop", "is a symlink loop",
         lambda t, fx: _prep(t)[:-2] + ["--out", str(_loop(t))]),
    Case("prepare", "--out in a read-only folder", "cannot write in",
         lambda t, fx: _prep(t)[:-2] + ["--out", str(_read_only(t))]),
    Case("prepare", "a --tokenizer file that is not a tokenizer.json",
         "is not a tokenizer.json that",
         lambda t, fx: ["prepare", "--corpus", str(_docs(t)), "--tokenizer", str(_text(t / "tk.json", '{"oops": 1}')),
                        "--out", str(t / "tok")]),
]
