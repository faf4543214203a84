"""kNN targets against an independent brute-force NumPy float64 reference."""


import json

import numpy as np
import pytest
import torch

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.distributions import aggregate_tokens, drop_self, interpolate, neighbour_weights
from mlpmem_lightning.knn.targets import KNNTargets, TargetSettings, build_targets
from tests.killing import KILL_SEED, kill_after_progress, kill_rng


def reference_targets(keys, values, k, T, K):
    """Row by row, float64: exact distances, self excluded by id, ties to the smaller id."""
    x = keys.astype(np.float64)
    ids_out, probs_out, masses = [], [], []
    for i in range(len(x)):
        d = ((x - x[i]) ** 2).sum(1)
        cand = np.array([j for j in range(len(x)) if j != i])
        order = cand[np.lexsort((cand, d[cand]))][:k]
        w = np.exp(-(d[order] - d[order].min()) / T)
        w /= w.sum()
        mass = {}
        for j, wj in zip(order, w):
            mass[int(values[j])] = mass.get(int(values[j]), 0.0) + wj
        masses.append(mass)
        top = sorted(mass.items(), key=lambda t: (-t[1], t[0]))[:K]
        kept = sum(p for _, p in top)
        ids_out.append([t for t, _ in top] + [-1] * (K - len(top)))
        probs_out.append([p / kept for _, p in top] + [0.0] * (K - len(top)))
    return np.array(ids_out), np.array(probs_out), masses


def assert_same_targets(ids, probs, ref_ids, ref_probs, masses, atol=2e-3):
    """Same probabilities per rank; same token per rank except where two tokens tie in mass."""
    np.testing.assert_allclose(probs.astype(np.float64), ref_probs, atol=atol)
    for r, c in zip(*np.nonzero(ids != ref_ids)):  # a genuine tie (kept or not): either token is right
        assert masses[r].get(int(ids[r, c]), -1.0) == pytest.approx(masses[r][int(ref_ids[r, c])], abs=1e-12), (r, c)
    assert np.all(np.abs(probs.astype(np.float64).sum(1) - 1) < 5e-3)


def make_datastore(path, keys, values):
    path.mkdir(parents=True)
    np.save(path / "keys.npy", keys.astype(np.float16))
    np.save(path / "values.npy", values.astype(np.int32))
    artifacts.write_manifest(path, "datastore", {"N": len(keys), "d": keys.shape[1],
                                                 "fingerprint": artifacts.hash_json(keys.tolist())})
    return path


@pytest.mark.parametrize("kind", ["random", "integer-ties"])
def test_targets_match_the_float64_reference(tmp_path, kind):
    rng = np.random.default_rng(0)
    n, d, k, T, K, vocab = 300, 8, 24, 2.0, 6, 40  # vocab > K: truncation matters
    if kind == "random":
        keys = rng.normal(size=(n, d))
    else:  # integer coordinates: exact duplicates and exactly tied distances in fp16/fp32/fp64
        keys = rng.integers(-1, 2, size=(n, d)).astype(np.float64)
        keys[50:60] = keys[49]  # a block of duplicates of row 49
    values = rng.integers(0, vocab, size=n)
    ds = make_datastore(tmp_path / "ds", keys, values)
    manifest = build_targets(ds, tmp_path / "t", TargetSettings(k=k, temperature=T, keep=K, chunk=64, backend="torch"),
                             device="cpu")
    t = KNNTargets(tmp_path / "t")
    ref_ids, ref_probs, masses = reference_targets(keys.astype(np.float16), values, k, T, K)
    assert_same_targets(np.asarray(t.ids), np.asarray(t.probs), ref_ids, ref_probs, masses)
    assert t.ids.dtype == np.int32 and t.probs.dtype == np.float16
    assert 0 < manifest["mass_kept_min"] <= manifest["mass_kept_mean"] <= 1


def test_drop_self_is_by_id_not_rank():
    dist = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 2.0]])
    ids = torch.tensor([[7, 3, 9], [4, 5, 6]])  # row 3's own id comes second (a duplicate key ties it)
    d, i = drop_self(dist, ids, torch.tensor([3, 8]))  # row 8 is absent: the farthest goes
    assert i.tolist() == [[7, 9], [4, 5]] and d.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_aggregation_pads_and_sums_duplicates():
    w = neighbour_weights(torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.tensor([[1, 2, 3, -1]]), 1.0)
    tok, p, kept = aggregate_tokens(w, torch.tensor([[5, 9, 5, 0]]), keep=4)
    assert tok.tolist() == [[5, 9, -1, -1]]
    np.testing.assert_allclose(p.numpy(), [[2 / 3, 1 / 3, 0, 0]])
    assert kept.item() == pytest.approx(1.0)


def test_interpolation_edges():
    lp_lm, lp_knn = torch.tensor([-1.5, -2.0], dtype=torch.float64), torch.tensor([-0.5, float("-inf")])
    out = interpolate(lp_lm, lp_knn.double(), torch.tensor([0.0, 0.25, 1.0]))
    assert torch.equal(out[0], lp_lm)  # λ = 0 is the decoder, exactly
    assert out[1, 0].item() == pytest.approx(np.log(0.75 * np.exp(-1.5) + 0.25 * np.exp(-0.5)))
    assert out[2, 0].item() == pytest.approx(-0.5) and out[2, 1].item() == float("-inf")


@pytest.mark.parametrize("settings, message", [
    (dict(k=0), "k=0"), (dict(k=300), "k=300"), (dict(k=10, keep=5, temperature=0.0), "temperature"),
    (dict(keep=100, k=10), "keep"), (dict(k=10, keep=5, index="hnsw"), "unknown index"),
])
def test_bad_settings(tmp_path, settings, message):
    ds = make_datastore(tmp_path / "ds", np.random.default_rng(0).normal(size=(300, 4)), np.zeros(300))
    with pytest.raises(UserError, match=message):
        build_targets(ds, tmp_path / "t", TargetSettings(**settings), device="cpu")
    assert not (tmp_path / "t" / "manifest.json").exists()


def test_incomplete_datastore_is_refused(tmp_path):
    ds = make_datastore(tmp_path / "ds", np.zeros((10, 4)), np.zeros(10))
    (ds / "manifest.json").unlink()
    with pytest.raises(UserError, match="incomplete"):
        build_targets(ds, tmp_path / "t", TargetSettings(k=3, keep=2), device="cpu")


@pytest.mark.parametrize("settings, kill_range", [
    ({"k": 64, "keep": 16, "chunk": 256, "backend": "torch"}, (2, 60)),  # row chunks: done counts 79 chunks
    ({"index": "ivfflat", "k": 64, "keep": 16, "nlist": 64, "nprobe": 8, "backend": "clustered"}, (2, 48)),  # lists
])
def test_killed_targets_resume_byte_identical(tmp_path, settings, kill_range):
    backend = settings["backend"]
    done_at = kill_rng(f"targets-{backend}").randint(*kill_range)  # a random point after progress
    rng = np.random.default_rng(1)
    ds = make_datastore(tmp_path / "ds", rng.normal(size=(20000, 16)), rng.integers(0, 500, 20000))
    s = TargetSettings(**settings)
    build_targets(ds, tmp_path / "full", s, device="cpu")
    code = ("import mlpmem_lightning.knn.targets as m; m.SAVE_ROWS = m.GROUP_ROWS = 256; "
            f"m.build_targets({str(ds)!r}, {str(tmp_path / 'killed')!r}, m.TargetSettings(**{settings!r}), "
            "device='cpu')")
    kill_after_progress(code, tmp_path / "killed" / "progress.rank0.json", done_at=done_at)
    assert not (tmp_path / "killed" / "manifest.json").exists(), f"killed at {done_at} (MLPMEM_KILL_SEED={KILL_SEED})"
    build_targets(ds, tmp_path / "killed", s, device="cpu")
    for name in ("ids.npy", "probs.npy"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes()


def test_a_clustered_run_is_resumed_only_with_the_kmeans_it_began_with(tmp_path):
    """Killed while its lists came from the torch k-means (what a GPU runs; forced here on the CPU), a targets run
    is started again from nothing, not resumed, by a run whose lists come from faiss's: the two k-means give other
    lists, and a resumed run would mix rows of both. Its bytes are those of an unbroken faiss run."""
    settings = {"index": "ivfflat", "k": 64, "keep": 16, "nlist": 64, "nprobe": 8, "backend": "clustered"}
    rng = np.random.default_rng(2)
    ds = make_datastore(tmp_path / "ds", rng.normal(size=(20000, 16)), rng.integers(0, 500, 20000))
    code = ("import mlpmem_lightning.knn.search.clustered as c, mlpmem_lightning.knn.search.kmeans as km; "
            "km.implementation = c.implementation = lambda device='cpu', backend='auto': 'torch-cpu'; "
            "import mlpmem_lightning.knn.targets as m; m.SAVE_ROWS = m.GROUP_ROWS = 256; "
            f"m.build_targets({str(ds)!r}, {str(tmp_path / 'killed')!r}, m.TargetSettings(**{settings!r}), "
            "device='cpu')")
    kill_after_progress(code, tmp_path / "killed" / "progress.rank0.json", done_at=24)
    assert not (tmp_path / "killed" / "manifest.json").exists()
    for out in ("killed", "full"):
        build_targets(ds, tmp_path / out, TargetSettings(**settings), device="cpu")
    for name in ("ids.npy", "probs.npy"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes()


def test_clustered_targets_from_before_the_probe_set_fix_are_refused_not_reused(tmp_path):
    """Targets of the clustered search made before SEARCH_REVISION 2 hold other neighbours (its probe sets were the
    lowest-numbered lists): their manifest lacks the revision, and a run asking for the same targets stops with a
    one-line error naming the fix instead of returning them."""
    settings = TargetSettings(index="ivfflat", k=16, keep=8, nlist=8, nprobe=2, backend="clustered")
    rng = np.random.default_rng(3)
    ds = make_datastore(tmp_path / "ds", rng.normal(size=(600, 8)), rng.integers(0, 50, 600))
    build_targets(ds, tmp_path / "t", settings, device="cpu")
    manifest = artifacts.read_manifest(tmp_path / "t", "knn_targets", check=False)
    assert manifest["search_revision"] == 2
    del manifest["search_revision"]  # as written before the fix
    artifacts.atomic_write_text(tmp_path / "t" / artifacts.MANIFEST, json.dumps(manifest))
    with pytest.raises(UserError, match="search_revision.*delete it"):
        build_targets(ds, tmp_path / "t", settings, device="cpu")


def test_mass_curve_matches_the_reference(tmp_path):
    from mlpmem_lightning.knn.targets import mass_curve

    rng = np.random.default_rng(2)
    keys, values = rng.normal(size=(200, 6)), rng.integers(0, 30, size=200)
    ds = make_datastore(tmp_path / "ds", keys, values)
    curve = mass_curve(ds, TargetSettings(k=20, keep=20, temperature=1.0, backend="torch"), rows=200, device="cpu")
    _, ref_probs, _ = reference_targets(keys.astype(np.float16), values, 20, 1.0, 20)
    cum = np.cumsum(ref_probs, axis=1)
    for K, v in curve.items():
        assert v["mean"] == pytest.approx(cum[:, K - 1].mean(), abs=1e-9)
        assert v["rows_ge_99"] == pytest.approx((cum[:, K - 1] >= 0.99).mean())


def test_two_ranks_of_row_chunks_write_the_same_bytes_as_one(tmp_path):
    """Every backend splits its self-search units across ranks (here exact search's row chunks)."""
    from mlpmem_lightning.core.distributed import run_on_ranks

    rng = np.random.default_rng(3)
    ds = make_datastore(tmp_path / "ds", rng.normal(size=(3000, 8)), rng.integers(0, 40, 3000))
    s = TargetSettings(k=16, keep=4, chunk=256, backend="torch")
    one = build_targets(ds, tmp_path / "one", s, device="cpu")
    run_on_ranks(build_targets, 2, "cpu", datastore=str(ds), out=str(tmp_path / "two"), settings=s)
    for name in ("ids.npy", "probs.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    two = KNNTargets(tmp_path / "two").manifest
    assert two["fingerprint"] == one["fingerprint"] and two["searcher"] == "TorchExact"
    assert abs(two["mass_kept_mean"] - one["mass_kept_mean"]) < 1e-9


def test_progress_is_saved_behind_the_search_and_never_ahead_of_the_bytes(tmp_path, monkeypatch):
    """A progress record's flush runs on its own thread: the search goes on while it runs (on the H200 each flush
    stalled the GPU for 8-10 s), and every row a record counts as done is already written when it is saved."""
    import threading

    import mlpmem_lightning.knn.targets as targets
    from mlpmem_lightning.core.writer import ArtifactWriter

    monkeypatch.setattr(targets, "SAVE_ROWS", 512)
    monkeypatch.setattr(targets, "GROUP_ROWS", 256)
    chunk, rng = 256, np.random.default_rng(3)
    ds = make_datastore(tmp_path / "ds", rng.normal(size=(8192, 8)), rng.integers(0, 50, 8192))
    out = tmp_path / "t"
    save = ArtifactWriter.save_progress
    records, went_on = [], threading.Event()

    def checked_save(self, state, arrays=()):
        probs = np.load(out / "probs.npy", mmap_mode="r")
        done_rows = min(state["done"] * chunk, len(probs))
        if done_rows:
            sums = probs[:done_rows].astype(np.float64).sum(1)
            records.append((state["done"], bool(np.all(np.abs(sums - 1) < 5e-3))))
        if len(records) == 1 and done_rows < len(probs):  # the first record: does the search go on meanwhile?
            for _ in range(400):
                if probs[done_rows:].astype(np.float64).sum() > 0:
                    went_on.set()
                    break
                threading.Event().wait(0.025)
        save(self, state, arrays)

    monkeypatch.setattr(ArtifactWriter, "save_progress", checked_save)
    build_targets(ds, out, TargetSettings(k=16, keep=8, chunk=chunk, backend="torch"), device="cpu")
    assert len(records) >= 2 and all(ok for _, ok in records), records
    assert went_on.is_set()  # rows past the record were written while it was being saved
    assert records[-1][0] == 8192 // chunk


def test_a_targets_run_logs_where_its_time_went(tmp_path, caplog):
    """One line names each phase (searcher, search loop, manifest) with its seconds, which together are the run."""
    import logging
    import re
    import time

    rng = np.random.default_rng(0)
    ds = make_datastore(tmp_path / "ds", rng.normal(size=(200, 8)), rng.integers(0, 30, size=200))
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="mlpmem_lightning"):
        build_targets(ds, tmp_path / "t", TargetSettings(k=16, keep=8, chunk=64, backend="torch"), device="cpu")
    wall = time.monotonic() - start
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("targets t:")]
    assert len(lines) == 1
    spans = dict(re.findall(r"(\w+) ([\d.]+) s", lines[0]))
    assert list(spans) == ["searcher", "search", "finish"]
    assert sum(map(float, spans.values())) <= wall + 0.15  # each span rounded to 0.1 s
