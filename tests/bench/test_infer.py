"""bench_infer at tiny sizes on CPU: every row present with sane rates, and the benchmark really generates."""

import math

import pytest
import torch

from mlpmem_lightning.bench.infer import bench_generate, bench_memory_training
from mlpmem_lightning.bench.synthetic import synthetic_datastore
from mlpmem_lightning.inference.generate import generate, knn_logprobs, memory_logprobs
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.search import TorchExact

pytestmark = pytest.mark.integration  # runs whole stages end to end

VOCAB, ROWS, PROMPT, NEW, BATCHES = 512, 5000, 16, 8, (1, 2)


def test_bench_generate_rows_and_tokens(tmp_path):
    trace: dict = {}
    rows = bench_generate("200k", VOCAB, ROWS, "cpu", batches=BATCHES, prompt_len=PROMPT, new_tokens=NEW, k=64,
                          repeats=1, trace=trace)
    searches = ["", "", "ivf", "exact", "again"]  # the exact kNN-LM last but the decoder's control row
    assert [(r["search"], r["batch"]) for r in rows] == [(s, b) for s in searches for b in BATCHES]
    for r in rows:
        assert r["bench"] == "generate" and r["gpu"] == "cpu" and r["dtype"] == "float32"
        for key in ("ttft_ms", "tokens_per_s", "total_s", "speed_vs_decoder"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["mode"], key, r[key])
        assert r["search_fallback_rows"] == 0
    for b in BATCHES:  # the base is the mean of the two decoder measurements
        first, again = (r["speed_vs_decoder"] for r in rows if r["mode"] == "decoder" and r["batch"] == b)
        assert math.isclose(first + again, 2.0)
        assert trace["tokens"][("decoder-again", b)].equal(trace["tokens"][("decoder", b)])
    assert {r["memory_size"] for r in rows if r["mode"] == "memory"} == {"mem-200k"}

    # independent check: the timed calls are the real thing (same tokens as generate() called directly)
    net, prompts, tokens = trace["net"], trace["prompts"], trace["tokens"]
    ds = Datastore(synthetic_datastore(tmp_path / "ds", ROWS, net.config.hidden_size, VOCAB, 0))
    keys, values = ds.keys, torch.from_numpy(ds.values.astype("int64"))
    others = {"decoder": (None, 0.0), "memory": (memory_logprobs(trace["memory"]), 0.5),
              "knn-exact": (knn_logprobs(TorchExact(keys), values, VOCAB, 64, 16.0), 0.25)}
    for b in BATCHES:
        prompt = prompts[b]
        assert prompt.shape == (b, PROMPT) and bool((prompt == prompt[:1]).all())  # one prompt, repeated
        for mode, (fn, lam) in others.items():
            assert torch.equal(tokens[(mode, b)], generate(net, prompt, NEW, fn, lam)), (mode, b)
        assert tokens[("decoder", b)].shape == (b, PROMPT + NEW)


def test_bench_memory_training_rows():
    rows = bench_memory_training("200k", VOCAB, "cpu", batch=4, seq_len=16, steps=3, warmup=1, keep=16)
    assert [r["mode"] for r in rows] == ["online", "offline"]
    for r in rows:
        assert r["bench"] == "memory_train" and r["memory_size"] == "mem-200k" and r["keep"] == 16
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 and r["step_ms"] > 0
        assert math.isclose(r["tokens_per_s"] * r["step_ms"] / 1e3, 4 * 16)


def test_bench_memory_training_modes_are_rows_of_their_own():
    rows = bench_memory_training("200k", VOCAB, "cpu", batch=2, seq_len=8, steps=2, warmup=1, keep=8,
                                 train_modes=("eager", "graph"))
    assert [(r["train_mode"], r["mode"]) for r in rows] == [(t, m) for t in ("eager", "graph")
                                                           for m in ("online", "offline")]


def test_speed_claim_halves_are_the_closest_to_half_of_n_by_brute_force():
    """The split the speed-claim bench times: counted by building every candidate network (sum of numel)."""
    from mlpmem_lightning.bench.speed_claim import bench_speed_claim, half_split
    from mlpmem_lightning.models.decoder import build_decoder
    from mlpmem_lightning.models.ladder import LADDER, MEMORY_LADDER, get_size
    from mlpmem_lightning.models.memory import build_memory

    def count(net):
        return sum(p.numel() for p in net.parameters())

    half, mem, n, n_half, n_mem = half_split("1.6m", VOCAB)
    assert n == count(build_decoder(get_size("1.6m"), VOCAB))
    totals = {s.name: count(build_decoder(s, VOCAB)) for s in LADDER if s.d_model <= 512}
    assert half == min(totals, key=lambda s: abs(totals[s] - n / 2)) and n_half == totals[half]
    mems = {m.name: count(build_memory(m.name, get_size(half).d_model, VOCAB)) for m in MEMORY_LADDER[:6]}
    assert mem == min(mems, key=lambda m: abs(mems[m] - n / 2)) and n_mem == mems[mem]

    rows = bench_speed_claim("1.6m", VOCAB, "cpu", batches=(1,), prompt_len=8, new_tokens=4, repeats=1)
    assert [(r["mode"], r["decoder_size"], r["memory_size"]) for r in rows] == [
        ("decoder", "1.6m", ""), ("half+memory", half, mem), ("decoder", "1.6m", "")]
    assert rows[1]["params_total"] == n_half + n_mem
    assert math.isclose(rows[0]["speed_vs_full_decoder"] + rows[2]["speed_vs_full_decoder"], 2.0)
