"""ClusteredIVF against a NumPy float64 brute force; its targets path against the reference and across ranks."""

import numpy as np
import pytest
import torch

from mlpmem_lightning.core.distributed import run_on_ranks
from mlpmem_lightning.knn.search.clustered import ClusteredIVF, train_centroids
from mlpmem_lightning.knn.targets import KNNTargets, TargetSettings, build_targets
from tests.knn.test_search import clustered, reference
from tests.knn.test_targets import assert_same_targets, make_datastore, reference_targets


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact)]))


def test_all_lists_probed_is_exact_search():
    keys = clustered(3000, 16, 12, seed=0)
    q = np.random.default_rng(1).standard_normal((200, 16)).astype(np.float32) * 3
    dist, ids = ClusteredIVF(keys, nlist=16, nprobe=16).search(torch.from_numpy(q), 40)
    ref_d, ref_i = reference(q, keys, 40)
    np.testing.assert_allclose(dist.numpy(), ref_d, rtol=1e-4, atol=1e-4)
    differ = ids.numpy() != ref_i  # only where two keys are (near-)tied in distance
    assert np.all(np.abs(dist.numpy()[differ] - ref_d[differ]) <= 1e-4 * (1 + ref_d[differ]))
    assert differ.mean() < 0.01


def test_few_lists_keep_high_recall_and_list_results_do_not_depend_on_the_call():
    keys = clustered(6000, 16, 30, seed=2)
    s = ClusteredIVF(keys, nlist=32, nprobe=6)
    q = torch.from_numpy(keys[:500].astype(np.float32))
    d, i = s.search(q, 20)
    assert recall(i.numpy(), reference(q.numpy(), keys, 20)[1]) > 0.95
    alone = torch.cat([s.search(q[j:j + 1], 20)[1] for j in range(0, 500, 50)])
    assert torch.equal(alone, i[::50])  # a query's result is the same whatever shares its call
    parts = [*s.self_search(20, 0, 10), *s.self_search(20, 10)]
    rows = torch.cat([p[1] for p in parts])
    ids = torch.cat([p[3] for p in parts])[torch.argsort(rows)]
    assert torch.equal(rows.sort().values, torch.arange(6000))
    assert torch.equal(ids, s.search(torch.from_numpy(keys.astype(np.float32)), 20)[1])


def test_centroids_are_seeded():
    keys = clustered(2000, 8, 5, seed=3)
    np.testing.assert_array_equal(train_centroids(keys, 8, seed=4), train_centroids(keys, 8, seed=4))


def _ds(tmp_path, n=1500, d=8, vocab=40, seed=0):
    rng = np.random.default_rng(seed)
    return make_datastore(tmp_path / "ds", rng.normal(size=(n, d)), rng.integers(0, vocab, size=n))


def test_clustered_targets_match_the_reference_when_every_list_is_probed(tmp_path):
    ds = _ds(tmp_path, n=300)
    s = TargetSettings(index="ivfflat", k=24, temperature=2.0, keep=6, nlist=4, nprobe=4, backend="clustered")
    m = build_targets(ds, tmp_path / "t", s, device="cpu")
    t = KNNTargets(tmp_path / "t")
    keys, values = np.load(ds / "keys.npy"), np.load(ds / "values.npy")
    ref = reference_targets(keys, values, 24, 2.0, 6)
    assert_same_targets(np.asarray(t.ids), np.asarray(t.probs), *ref)
    assert m["backend"] == "clustered" and m["searcher"] == "ClusteredIVF"


def test_two_ranks_write_the_same_bytes_as_one(tmp_path):
    ds = _ds(tmp_path, n=3000, d=8)
    s = TargetSettings(index="ivfflat", k=32, keep=8, nlist=16, nprobe=4, backend="clustered")
    one = build_targets(ds, tmp_path / "one", s, device="cpu")
    run_on_ranks(build_targets, 2, "cpu", datastore=str(ds), out=str(tmp_path / "two"), settings=s)
    two = KNNTargets(tmp_path / "two").manifest
    for name in ("ids.npy", "probs.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert two["fingerprint"] == one["fingerprint"]
    assert abs(two["mass_kept_mean"] - one["mass_kept_mean"]) < 1e-9


def test_candidate_budget_bounds_dense_lists():
    rng = np.random.default_rng(7)
    dense = np.repeat(rng.standard_normal((1, 8)), 3000, 0) + rng.standard_normal((3000, 8)) * 1e-3
    keys = np.concatenate([dense, rng.standard_normal((3000, 8)) * 5]).astype(np.float16)
    s = ClusteredIVF(keys, nlist=32, nprobe=8)
    budget = 2 * 8 * -(-6000 // 32)
    sizes = np.array(s.sizes)
    own = s.counts.numpy()
    assert np.all((sizes <= budget) | (np.array(s.used) == 1)) and np.all(sizes >= own)
    assert min(s.used) < 8  # some dense lists were cut
    for lst in range(32):  # the candidate positions are exactly the kept probes' keys
        pos = s.candidates(lst)
        assert len(pos) == sizes[lst]
        lists = np.searchsorted(np.array(s.bounds), pos.numpy(), side="right") - 1
        assert set(lists) == set(s.probes[lst, :s.used[lst]].tolist())


def test_centroids_are_cached_beside_the_datastore(tmp_path, monkeypatch):
    import mlpmem_lightning.knn.search.clustered as cs
    from mlpmem_lightning.knn.search.clustered import cached_centroids

    keys = clustered(2000, 8, 5, seed=3)
    first = cached_centroids(tmp_path, keys, 8, fingerprint="fp0")
    assert all((tmp_path / f"centroids-8-seed0-faiss-cpu.{ext}").is_file() for ext in ("npy", "json"))
    np.testing.assert_array_equal(first, train_centroids(keys, 8))
    monkeypatch.setattr(cs, "train_centroids", lambda *a: pytest.fail("retrained a valid cache"))
    np.testing.assert_array_equal(cached_centroids(tmp_path, keys, 8, fingerprint="fp0"), first)  # the cache is used
    monkeypatch.setattr(cs, "train_centroids", lambda *a: first + 1)
    np.save(tmp_path / "centroids-8-seed0-faiss-cpu.npy", first + 2)  # an array its record does not describe: retrained
    np.testing.assert_array_equal(cached_centroids(tmp_path, keys, 8, fingerprint="fp0"), first + 1)
    monkeypatch.setattr(cs, "train_centroids", lambda *a: first + 3)  # another datastore's keys: retrained
    np.testing.assert_array_equal(cached_centroids(tmp_path, keys, 8, fingerprint="fp1"), first + 3)


def test_self_search_work_counts_every_scored_pair():
    """The FLOPs the bench holds against the fp32 peak: every (query, candidate) pair a self-search scores,
    counted by brute force over the lists' own keys and probe sets, at 2d FLOPs each, plus assigning each key."""
    keys = clustered(3000, 8, 24, seed=3)
    s = ClusteredIVF(keys, nlist=24, nprobe=5)
    pairs = 0
    for lst in range(s.nlist):
        queries = s.bounds[lst + 1] - s.bounds[lst]
        probe = s.probes[lst, :s.used[lst]].tolist()
        pairs += queries * sum(s.bounds[p + 1] - s.bounds[p] for p in probe)
    flops, scored = s.self_search_work()
    assert scored == pairs and flops == 2 * 8 * (pairs + 3000 * 24)


def offset_keys(n: int = 6000, d: int = 16, centres: int = 30, seed: int = 5) -> np.ndarray:
    """Clustered keys sharing one large component, as a language model's keys do (SmolLM2's last-layer FFN inputs:
    one coordinate carries ~3/4 of the norm): every centroid then has a positive dot product with every other."""
    keys = clustered(n, d, centres, seed).astype(np.float32)
    keys[:, 0] += 40
    return keys.astype(np.float16)


def test_probe_sets_are_each_lists_nearest_centroids_in_order():
    """Against float64 NumPy distances between the centroids (ties to the lower index): own list first, then the
    nearest others. Before the fix, the clamped partial expansion tied every near centroid at 0 and the probe set
    of every list was lists 0, 1, …"""
    s = ClusteredIVF(offset_keys(), nlist=32, nprobe=6)
    cen = s.centroids.numpy().astype(np.float64)
    dist = ((cen[:, None, :] - cen[None, :, :]) ** 2).sum(-1)
    want = np.lexsort((np.broadcast_to(np.arange(32), dist.shape), dist), axis=1)[:, :6]
    np.testing.assert_array_equal(s.probes.numpy(), want)
    assert np.array_equal(s.probes[:, 0].numpy(), np.arange(32))


def test_keys_with_a_shared_large_component_keep_high_recall():
    keys = offset_keys()
    s = ClusteredIVF(keys, nlist=32, nprobe=6)
    q = torch.from_numpy(keys[:500].astype(np.float32))
    assert recall(s.search(q, 20)[1].numpy(), reference(q.numpy(), keys, 20)[1]) > 0.95
    rows, ids = zip(*[(r, i) for _, r, _, i in s.self_search(20)])  # the targets path: the same probe sets
    got = torch.cat(ids)[torch.argsort(torch.cat(rows))][:500].numpy()
    assert recall(got, reference(q.numpy(), keys, 20)[1]) > 0.95
