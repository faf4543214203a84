"""`mlpmem bench` at toy sizes on CPU: every section's rows, the MFU arithmetic, recall, the files."""

import numpy as np
import pandas as pd
import pytest
import torch

from mlpmem_lightning.bench import bench_train, write_section
from mlpmem_lightning.bench.targets import _recall, bench_targets
from mlpmem_lightning.models.ladder import flops_per_token, get_size

pytestmark = pytest.mark.integration  # runs whole stages end to end

def test_train_rows_report_consistent_rates(small_store):
    rows = bench_train(["200k"], str(small_store), seq_len=32, batch=4, steps=3, warmup=1, num_workers=0)
    (r,) = rows
    assert r["tokens_per_s"] == round(4 * 32 / (r["step_ms"] / 1e3)) or abs(
        r["tokens_per_s"] - 4 * 32 / (r["step_ms"] / 1e3)) <= 1
    fpt = flops_per_token(get_size("200k"), r["vocab"], 32)
    assert abs(r["model_tflops"] - fpt * r["tokens_per_s"] / 1e12) < 0.01
    assert r["gpu"] == "cpu" and r["mfu"] is None  # no peak known for a CPU


def test_train_profile_writes_the_fits_kernel_and_hook_tables(small_store, tmp_path):
    """--profile fits once more under torch.profiler and Lightning's SimpleProfiler: the step's wall and busy
    times head the kernel table, and the hook table names the training batch's host time."""
    (r,) = bench_train(["200k"], str(small_store), seq_len=32, batch=4, steps=3, warmup=1, num_workers=0,
                       profile_dir=tmp_path, log_every_n_steps=1)
    assert r["log_every_n_steps"] == 1
    kernels = (tmp_path / "profile_fit_200k_eager.txt").read_text()
    assert kernels.startswith("# 5 steps of the fit under the profiler:") and "## by host time" in kernels
    assert "run_training_batch" in (tmp_path / "fit-profile_fit_200k_eager_hooks.txt").read_text()


def test_targets_rows_and_recall(tmp_path):
    rows = bench_targets([4000], tmp_path, d=16, k=32, keep=8, vocab=100, nprobe=8, sample=64, pq_m=8)
    by = {r["backend"].split(" (")[0]: r for r in rows}
    assert set(by) >= {"torch exact", "clustered IVF", "torch IVF per-query probes", "faiss-cpu IVFPQ m=8"}
    assert by["torch exact"]["recall"] == 1.0 and all(r["rows_per_s"] > 0 for r in rows)
    assert by["clustered IVF"]["recall"] > 0.8 and by["clustered IVF"]["queries"] == 4000
    assert not list(tmp_path.glob("ds-*"))  # scratch removed


def test_recall_counts_shared_ids():
    ids = torch.tensor([[1, 2, 3, -1], [4, 5, 6, 7]])
    exact = torch.tensor([[1, 2, 9, 8], [7, 6, 5, 4]])
    assert _recall(ids, exact) == np.mean([2 / 4, 4 / 4])


def test_sections_replace_rows_of_the_same_key_only(tmp_path):
    write_section(tmp_path, "train", [{"gpu": "A", "decoder_size": "3m", "x": 1},
                                      {"gpu": "A", "decoder_size": "6m", "x": 2},
                                      {"gpu": "B", "decoder_size": "3m", "x": 3}])
    write_section(tmp_path, "train", [{"gpu": "A", "decoder_size": "3m", "x": 4}])
    df = pd.read_csv(tmp_path / "train.csv")
    assert sorted(zip(df.gpu, df.decoder_size, df.x)) == [("A", "3m", 4), ("A", "6m", 2), ("B", "3m", 3)]
    md = (tmp_path / "bench.md").read_text()
    assert "## train" in md and "| gpu | decoder_size | x |" in md


def test_sections_match_keys_read_back_from_csv(tmp_path):
    """An empty cell read back as NaN is the same key as the '' a new row carries."""
    row = {"gpu": "A", "mode": "decoder", "memory_size": "", "search": "", "batch": 1, "x": 1.0}
    write_section(tmp_path, "generate", [row, {**row, "mode": "memory", "memory_size": "m"}])
    write_section(tmp_path, "generate", [{**row, "x": 2.0}])
    df = pd.read_csv(tmp_path / "generate.csv")
    assert sorted(zip(df["mode"], df.x)) == [("decoder", 2.0), ("memory", 1.0)]


def test_targets_backends_pick_rows(tmp_path):
    """Only the chosen backends run (exact always: the recall reference); the scratch space is removed."""
    rows = bench_targets([3000], tmp_path, d=16, k=16, keep=4, vocab=50, nprobe=4, sample=32, pq_m=8,
                         backends=("faiss",))
    assert [r["backend"].split(" ")[0] for r in rows] == ["torch", "faiss-cpu"]
    assert rows[1]["recall"] > 0.3 and not list(tmp_path.glob("ds-*"))
