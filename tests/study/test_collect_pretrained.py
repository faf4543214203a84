"""`mlpmem collect` over runs on a pretrained base (a transformers directory, no fit): the base alone (DecoderLM
``init_from``, no checkpoint), its kNN-LM and a base-relative memory give the sweep's rows, and the memory-size
summary reads them. References: transformers in float64 for the base's loss, the saved weights for the
parameter counts, the runs' own metrics files for λ and T."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.data.token_store import TokenStore
from tests.helpers import EXP
from tests.pretrained_helpers import base_with_store

pytestmark = pytest.mark.integration
SEQ = 32
COMMON = ["--config", str(EXP / "trainer/cpu.yaml"), "--trainer.enable_progress_bar", "false", "--data.seq_len",
          str(SEQ), "--data.batch_size", "4"]


def _last(path, column):
    df = pd.read_csv(path)
    return float(df[column].dropna().iloc[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs scripts/gpu_smollm2.sh makes, on a tiny random base: base, kNN-LM (T, λ on valid), memory x0.5."""
    from mlpmem_lightning.knn.datastore import DatastoreSettings, build_datastore
    from mlpmem_lightning.knn.targets import TargetSettings, build_targets

    root = tmp_path_factory.mktemp("collect-pretrained")
    base, _ = base_with_store(root, "tinybase")
    common = [*COMMON, "--data.token_store", str(root / "tokens")]
    for sub in ("validate", "test"):
        run_cli([sub, *common, "--model", "DecoderLM", "--model.init_from", str(base),
                 "--trainer.default_root_dir", str(root / "base")])
    build_datastore(base, root / "tokens", root / "ds", DatastoreSettings(batch_size=8, seq_len=SEQ), device="cpu")
    knn = [*common, "--model", "KNNLM", "--model.decoder", str(base), "--model.datastore", str(root / "ds"),
           "--model.k", "8", "--trainer.default_root_dir", str(root / "knnlm")]
    run_cli(["validate", *knn, "--model.temperatures", "[1.0, 4.0, 16.0]"])
    t = min((1.0, 4.0, 16.0), key=lambda x: abs(x - _last(root / "knnlm/validate/metrics.csv", "val/temperature")))
    lam = round(_last(root / "knnlm/validate/metrics.csv", "val/best_lambda"), 2)
    run_cli(["test", *knn, "--model.temperatures", f"[{t}]", "--model.lambda_", str(lam)])
    build_targets(root / "ds", root / "tg", TargetSettings(index="flat", k=8, keep=8, temperature=t), device="cpu")
    mem = [*common, "--model", "MemoryLM", "--model.decoder", str(base), "--model.size", "x0.5", "--model.mode",
           "offline", "--data.targets", str(root / "tg"), "--trainer.default_root_dir", str(root / "mem")]
    run_cli(["fit", *mem, "--model.max_tokens", str(3 * 4 * SEQ)])
    ckpt = str(next((root / "mem").rglob("best.ckpt")))
    run_cli(["validate", *mem, "--ckpt_path", ckpt])
    lam = round(_last(root / "mem/validate/metrics.csv", "val/best_lambda"), 2)
    run_cli(["test", *mem, "--ckpt_path", ckpt, "--model.lambda_", str(lam)])
    return root, base, ckpt


def _reference_nll(base, tokens: np.ndarray) -> float:
    """Mean next-token NLL over the seq_len cut of the split, with transformers in float64."""
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(base).double().eval()
    n = (len(tokens) - 1) // SEQ
    ids = torch.from_numpy(tokens[: n * SEQ + 1].astype(np.int64))
    x, y = ids[:-1].view(n, SEQ), ids[1:].view(n, SEQ)
    with torch.no_grad():
        lp = torch.log_softmax(net(input_ids=x).logits, -1)
    return float(-lp.gather(-1, y[..., None]).mean())


def test_collect_gives_the_rows_of_a_pretrained_base(runs):
    from transformers import AutoModelForCausalLM

    from mlpmem_lightning.study.collect import collect

    root, base, ckpt = runs
    df = collect([root / "base", root / "knnlm", root / "mem"], root / "results.csv", study="smollm2-memory")
    assert set(df["decoder_size"]) == {"tinybase"} and df["decoder_fingerprint"].nunique() == 1
    test = df[df["split"] == "test"].set_index("arch")
    store = TokenStore(root / "tokens")
    assert test.loc["decoder", "loss"] == pytest.approx(_reference_nll(base, store.split("test")), rel=1e-5)
    n_base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
    assert (df["params_decoder"] == n_base).all()
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    n_memory = sum(v.numel() for k, v in state.items() if k.startswith("memory."))
    assert test.loc["mlp_memory", "params_memory"] == n_memory and test.loc["mlp_memory", "memory_size"] == "x0.5"
    rows = len(np.load(root / "ds" / "keys.npy", mmap_mode="r"))
    assert test.loc["knn_lm", "datastore_rows"] == rows == test.loc["mlp_memory", "datastore_rows"]
    knn_t = _last(root / "knnlm/validate/metrics.csv", "val/temperature")
    assert test.loc["knn_lm", "temperature"] == pytest.approx(knn_t, rel=1e-6)
    lam = _last(root / "mem/validate/metrics.csv", "val/best_lambda")
    assert test.loc["mlp_memory", "lambda"] == pytest.approx(lam, abs=1e-6)
    assert test.loc["mlp_memory", "loss"] == pytest.approx(_last(root / "mem/test/metrics.csv", "test/loss"))
    assert test.loc["mlp_memory", "train_tokens"] == 3 * 4 * SEQ and test.loc["decoder", "flops_train_total"] == 0


def test_memory_summary_reads_the_collected_rows(runs, tmp_path):
    """summary.md: the table's perplexities are exp of the collected losses; one size gives no fit, so the rows
    are repeated at four sizes (params scaled) to exercise the fit section."""
    from mlpmem_lightning.study.report.memory_summary import write_summary

    root = runs[0]
    df = pd.read_csv(root / "results.csv")
    mem = df[df["arch"] == "mlp_memory"]
    sizes = [mem.assign(memory_size=f"x{r}", params_memory=mem["params_memory"] * r * 2,
                        loss=mem["loss"] + 0.1 / r) for r in (0.25, 0.5, 1, 2)]
    pd.concat([df[df["arch"] != "mlp_memory"], *sizes]).to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "times.csv").write_text("stage,seconds,exit,utc\nimport,1.5,0,x\ntargets,2.5,0,x\n")
    text = write_summary(tmp_path / "r.csv", tmp_path / "times.csv", tmp_path, bootstrap=20).read_text()
    base = df[(df["arch"] == "decoder") & (df["split"] == "test")]["loss"].item()
    assert f"{math.exp(base):.3f}" in text and "α 95% interval" in text
    assert "| total (attempts that finished) | 4.0 |" in text
    assert (tmp_path / "memory_scaling.png").stat().st_size > 0


def test_a_ce_only_control_on_the_base_is_counted_without_a_search(runs):
    """A memory trained at α = 0 without targets (the CE-only control) is ``mlp_memory_ce``: the same memory
    parameters as its checkpoint holds, no datastore, and FLOPs of its own training only (the x0.5 memory with
    targets of the same size and tokens costs that plus the datastore pass and the search)."""
    from mlpmem_lightning.study.collect import collect

    root, base, _ = runs
    ce = [*COMMON, "--data.token_store", str(root / "tokens"), "--model", "MemoryLM", "--model.decoder", str(base),
          "--model.size", "x0.5", "--model.mode", "online", "--model.alpha", "0.0",
          "--trainer.default_root_dir", str(root / "ce")]
    run_cli(["fit", *ce, "--model.max_tokens", str(3 * 4 * SEQ)])
    ckpt = str(next((root / "ce").rglob("best.ckpt")))
    run_cli(["validate", *ce, "--ckpt_path", ckpt])
    run_cli(["test", *ce, "--ckpt_path", ckpt, "--model.lambda_",
             str(round(_last(root / "ce/validate/metrics.csv", "val/best_lambda"), 2))])
    df = collect([root / "ce", root / "mem"], root / "ce.csv", study="smollm2-memory")
    test = df[df["split"] == "test"].set_index("arch")
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert test.loc["mlp_memory_ce", "params_memory"] == sum(v.numel() for k, v in state.items()
                                                            if k.startswith("memory."))
    control = test.loc["mlp_memory_ce"]
    assert pd.isna(control.get("datastore_rows")) and pd.isna(control["temperature"])
    assert 0 < test.loc["mlp_memory_ce", "flops_train_total"] < test.loc["mlp_memory", "flops_train_total"]


def _run_rows(sizes: dict[str, float], base_loss: float = 3.35, targets: str = "t0") -> pd.DataFrame:
    """Results of one run on one base: the base and kNN-LM rows and one memory row per size, valid and test."""
    rows = []
    for split in ("valid", "test"):
        rows += [{"arch": "decoder", "memory_size": None, "split": split, "loss": base_loss},
                 {"arch": "knn_lm", "memory_size": None, "split": split, "loss": base_loss - 0.18}]
        rows += [{"arch": "mlp_memory", "memory_size": size, "split": split, "loss": loss,
                  "targets_fingerprint": targets} for size, loss in sizes.items()]
    return pd.DataFrame(rows).assign(decoder_fingerprint="d0", token_store_fingerprint="s0")


def test_results_of_one_run_from_several_sessions_are_read_as_one(tmp_path):
    """Sizes finished in two sessions: every memory row once, the base and kNN-LM rows once per split."""
    from mlpmem_lightning.study.report.memory_summary import read_results

    _run_rows({"x0.125": 3.27, "x0.25": 3.26}).to_csv(tmp_path / "a.csv", index=False)
    _run_rows({"x0.5": 3.25, "x1": 3.24}, base_loss=3.35 + 1e-5).to_csv(tmp_path / "b.csv", index=False)
    df = read_results([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert sorted(df[df["arch"] == "mlp_memory"]["memory_size"].unique()) == ["x0.125", "x0.25", "x0.5", "x1"]
    assert df.groupby(["arch", "split"]).size()[("decoder", "test")] == 1
    assert df[(df["arch"] == "decoder") & (df["split"] == "test")]["loss"].item() == 3.35  # the first file's


@pytest.mark.parametrize("second, message", [
    (dict(sizes={"x1": 3.24}, targets="t1"), "differ in targets_fingerprint"),
    (dict(sizes={"x1": 3.24}, base_loss=3.36), "decoder (test|valid) loss differs"),
    (dict(sizes={"x0.25": 3.25}), "mlp_memory x0.25 is in several"),
])
def test_results_of_different_runs_are_refused(tmp_path, second, message):
    from mlpmem_lightning.study.report.memory_summary import main

    _run_rows({"x0.125": 3.27, "x0.25": 3.26}).to_csv(tmp_path / "a.csv", index=False)
    _run_rows(**second).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(SystemExit, match=f"^mlpmem: error: .*{message}"):
        main(["--results", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path)])


def test_declared_same_targets_are_read_as_one_and_no_others(tmp_path):
    """--same-targets: the fingerprints the caller declares one set are merged; one not declared is still refused."""
    from mlpmem_lightning.study.report.memory_summary import main, read_results

    _run_rows({"x0.125": 3.27, "x0.25": 3.26}).to_csv(tmp_path / "a.csv", index=False)
    _run_rows({"x1": 3.24}, targets="t1").to_csv(tmp_path / "b.csv", index=False)
    df = read_results([tmp_path / "a.csv", tmp_path / "b.csv"], same_targets=["t0", "t1"])
    assert set(df["targets_fingerprint"].dropna()) == {"t0"} and (df["memory_size"] == "x1").sum() == 2
    with pytest.raises(SystemExit, match="^mlpmem: error: .*differ in targets_fingerprint"):
        main(["--results", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--out", str(tmp_path),
              "--same-targets", "t0", "t2"])
