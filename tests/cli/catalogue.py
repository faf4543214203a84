"""Shared pieces of the bad-input catalogue: the `Case` row and the helpers that build each row's broken input."""


from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml

from mlpmem_lightning.core import artifacts
from tests.helpers import EXP, ROOT

CATALOGUE_DOC = ROOT / "docs" / "bad-inputs.md"
TRAINER = ["--config", str(EXP / "trainer/cpu.yaml"), "--trainer.enable_progress_bar", "false"]


@dataclass(frozen=True)
class Case:
    stage: str
    wrong: str  # what is wrong, as the documented table says it
    message: str  # a stable part of the one-line error
    argv: Callable[[Path, SimpleNamespace], list[str]]


def _text(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(path: Path, **changes) -> Path:
    m = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**m, **changes}))
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _ckpt(fx: SimpleNamespace) -> Path:
    return fx.decoder / "checkpoints" / "best.ckpt"


def _foreign_ckpt(t: Path, fx) -> Path:
    """A Lightning checkpoint of another module (an MLP Memory's, no decoder weights in it)."""
    path = t / "memory.ckpt"
    torch.save({"hyper_parameters": {"decoder": str(fx.decoder), "size": "mem-200k"},
                "state_dict": {"memory.head.weight": torch.zeros(4, 4)}}, path)
    return path


def _resized_ckpt(t: Path, fx) -> Path:
    """The decoder's checkpoint claiming another ladder rung: weights of the wrong shapes."""
    ckpt = torch.load(_ckpt(fx), weights_only=False)
    ckpt["hyper_parameters"]["size"] = "800k"
    torch.save(ckpt, t / "resized.ckpt")
    return t / "resized.ckpt"


def _synthetic_ds(t: Path, keys: np.ndarray) -> Path:
    out = t / "ds"
    out.mkdir()
    np.save(out / "keys.npy", keys.astype(np.float16))
    np.save(out / "values.npy", np.arange(len(keys), dtype=np.int32) % 50)
    artifacts.write_manifest(out, "datastore", {"N": len(keys), "d": keys.shape[1], "fingerprint": "f",
                                               "layer": -1, "seq_len": 8})
    return out


def _nan_ds(t: Path) -> Path:
    keys = np.random.default_rng(0).normal(size=(500, 8))
    keys[7, 3] = np.inf
    return _synthetic_ds(t, keys)


def _spec(t: Path, **fields) -> Path:
    spec = {"study": "bad", "decoder_sizes": ["200k"], "out": str(t / "study"), **fields}
    return _text(t / "spec.yaml", yaml.safe_dump(spec))


def _results(t: Path, drop: str | None = None, sizes: int = 3, stores: int = 1) -> Path:
    from mlpmem_lightning.study.results import COLUMNS

    rows = [{c: 1 for c in COLUMNS} | {"arch": "decoder", "split": "test", "decoder_size": f"s{i}",
                                        "params_total": 10 ** (6 + i), "flops_train_total": 10 ** (14 + i),
                                        "loss": 5.0 - i / 10, "token_store_fingerprint": f"store{i % stores}"}
            for i in range(sizes)]
    df = __import__("pandas").DataFrame(rows)
    if drop:
        df = df.drop(columns=[drop])
    df.to_csv(t / "results.csv", index=False)
    return t / "results.csv"


def _fit(fx, run: Path, *extra: str) -> list[str]:
    return ["fit", *TRAINER, "--config", str(EXP / "model/decoder_200k.yaml"), "--data.token_store", str(fx.store),
            "--data.seq_len", "128", "--data.batch_size", "4", "--trainer.default_root_dir", str(run), *extra]


