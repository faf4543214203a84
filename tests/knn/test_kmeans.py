"""The torch k-means (the GPU path of the clustered IVF's centroids), run on the CPU, against a NumPy float64
Lloyd's algorithm and against faiss; and the centroid cache keyed by the k-means that made it."""

import json

import numpy as np
import pytest
import torch

from mlpmem_lightning.knn.search import kmeans
from mlpmem_lightning.knn.search.kmeans import implementation, initial_rows, split_empty, torch_kmeans


def blobs(n: int, d: int, centres: int, seed: int, spread: float = 20.0) -> np.ndarray:
    """Well-separated Gaussian blobs (centres ``spread`` apart per coordinate, unit noise), float32."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)) * spread
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float32)


def objective(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances to the nearest centroid, by differences in float64."""
    diff = x.astype(np.float64)[:, None] - centroids.astype(np.float64)[None]
    return float((diff * diff).sum(-1).min(1).sum())


def reference_lloyd(x: np.ndarray, nlist: int, niter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 Lloyd's algorithm by brute force from the torch path's initial centroids: (centroids, labels).

    Every round checks that no key is near a tie between two centroids (a gap of 1e-4 relative: over twice what
    the float32 path's rounding of |c|^2 - 2 x.c can move a gap on these keys) and no cluster is empty, so the
    float32 path must make the very same assignments."""
    x = x.astype(np.float64)
    c = x[initial_rows(len(x), nlist, seed)]
    for _ in range(niter):
        dist = ((x[:, None] - c[None]) ** 2).sum(-1)
        two = np.sort(dist, 1)[:, :2]
        assert np.all(two[:, 1] - two[:, 0] > 1e-4 * (1 + two[:, 1])), "data with near-ties: pick another seed"
        labels = dist.argmin(1)
        assert np.all(np.bincount(labels, minlength=nlist) > 0), "an empty cluster: pick another seed"
        c = np.stack([x[labels == j].mean(0) for j in range(nlist)])
    return c, ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)


@pytest.mark.parametrize("seed", [0, 3])
def test_torch_kmeans_is_lloyd_from_the_same_start(seed):
    x = blobs(2000, 8, 16, seed=seed + 10, spread=3.0)
    ref_c, ref_labels = reference_lloyd(x, 16, 10, seed)
    got = torch_kmeans(x, 16, 10, seed, "cpu")
    assert got.dtype == np.float32 and got.shape == (16, 8)
    np.testing.assert_allclose(got, ref_c, rtol=1e-5, atol=1e-5)
    labels = kmeans.nearest(torch.from_numpy(x), torch.from_numpy(got)).numpy()
    np.testing.assert_array_equal(labels, ref_labels)


def test_torch_kmeans_is_seeded():
    x = blobs(3000, 16, 12, seed=3, spread=2.0)
    first = torch_kmeans(x, 24, 10, 5, "cpu")
    assert first.tobytes() == torch_kmeans(x, 24, 10, 5, "cpu").tobytes()
    assert first.tobytes() != torch_kmeans(x, 24, 10, 6, "cpu").tobytes()
    keys = x.astype(np.float16)  # and through train_centroids, which samples the rows first
    once = kmeans.train_centroids(keys, 24, seed=2, per_list=64, backend="torch")
    assert once.tobytes() == kmeans.train_centroids(keys, 24, seed=2, per_list=64, backend="torch").tobytes()


def test_an_empty_cluster_is_split_from_a_large_one(monkeypatch):
    """Keys at exactly the same point: initial centroids drawn twice from one point are tied, the later one gets
    no keys, and it takes half of another cluster instead of staying (or turning NaN)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8)) * 20
    x = np.concatenate([np.repeat(centres, 40, 0), centres[rng.integers(0, 4, 40)] + rng.standard_normal((40, 8))])
    x = x.astype(np.float32)
    assert len(np.unique(x[initial_rows(len(x), 8, 0)], axis=0)) < 8  # duplicated initial centroids
    empties = []

    def watch(cen: torch.Tensor, counts: np.ndarray, gen: np.random.Generator) -> torch.Tensor:
        empties.append(int((counts == 0).sum()))
        return split_empty(cen, counts, gen)

    monkeypatch.setattr(kmeans, "split_empty", watch)
    got = torch_kmeans(x, 8, 5, 0, "cpu")
    assert empties[0] > 0
    assert np.isfinite(got).all() and len(np.unique(got, axis=0)) == 8
    labels = kmeans.nearest(torch.from_numpy(x), torch.from_numpy(got)).numpy()
    assert np.all(np.bincount(labels, minlength=8) > 0)  # every list ends up with keys


def test_split_empty_halves_a_cluster_of_more_than_one_key():
    cen = torch.tensor([[1.0, 2.0, 4.0], [9.0, 9.0, 9.0], [5.0, 5.0, 5.0]])
    out = split_empty(cen, np.array([6, 0, 1]), np.random.default_rng(0)).numpy()  # only cluster 0 can split
    push = np.array([1, -1, 1]) * kmeans.EPS
    np.testing.assert_array_equal(out[1], (cen[0].numpy() * (1 + push)).astype(np.float32))
    np.testing.assert_array_equal(out[0], (cen[0].numpy() * (1 - push)).astype(np.float32))
    np.testing.assert_array_equal(out[2], cen[2].numpy())
    assert split_empty(cen, np.array([1, 0, 1]), np.random.default_rng(0)) is not None  # nothing to split: no error
    assert split_empty(cen, np.array([2, 3, 1]), np.random.default_rng(0)) is cen  # no empty cluster: unchanged


def test_torch_objective_is_close_to_faiss():
    """Both are local optima from random starts; on blobs both find the blobs and split them alike."""
    for seed in (0, 1):
        x = blobs(4000, 8, 4, seed=seed)
        ours, theirs = objective(x, torch_kmeans(x, 16, 10, 0, "cpu")), objective(x, kmeans.faiss_kmeans(x, 16, 10, 0))
        assert max(ours, theirs) < 4000 * 8  # better than the blob centres alone: both found the blobs
        assert abs(ours / theirs - 1) < 0.05


def test_implementation_follows_the_device():
    assert implementation("cpu") == "faiss-cpu"
    assert implementation("cuda") == "torch-cuda" and implementation(torch.device("cuda", 1)) == "torch-cuda"
    assert implementation("cpu", "torch") == "torch-cpu" and implementation("cuda", "faiss") == "faiss-cpu"
    with pytest.raises(ValueError, match="k-means backend"):
        implementation("cpu", "sklearn")


def test_the_cache_is_keyed_by_the_kmeans_that_made_it(tmp_path, monkeypatch):
    import mlpmem_lightning.knn.search.clustered as cs

    keys = blobs(600, 8, 4, seed=1).astype(np.float16)
    calls = []

    def fake(keys, nlist, seed, per_list, niter, device):
        calls.append(str(device))
        return np.full((nlist, keys.shape[1]), len(calls), np.float32)

    monkeypatch.setattr(cs, "train_centroids", fake)
    gpu, cpu = (tmp_path / f"centroids-4-seed0-{k}.json" for k in ("torch-cuda", "faiss-cpu"))
    first = cs.cached_centroids(tmp_path, keys, 4, fingerprint="fp", device="cuda")
    assert calls == ["cuda"] and json.loads(gpu.read_text())["kmeans"] == "torch-cuda"
    np.testing.assert_array_equal(cs.cached_centroids(tmp_path, keys, 4, fingerprint="fp", device="cuda:1"), first)
    assert len(calls) == 1  # the same k-means on another GPU: reused
    assert cs.cached_centroids(tmp_path, keys, 4, fingerprint="fp", device="cpu")[0, 0] == 2  # faiss's: its own file
    assert calls[-1] == "cpu" and json.loads(cpu.read_text())["kmeans"] == "faiss-cpu"
    np.testing.assert_array_equal(cs.cached_centroids(tmp_path, keys, 4, fingerprint="fp", device="cuda"), first)
    assert len(calls) == 2  # the GPU's cache was left alone by the CPU run, and is still used
    old = {k: v for k, v in json.loads(cpu.read_text()).items() if k != "kmeans"}
    cpu.write_text(json.dumps(old))  # a record that does not say which k-means made it: retrained, not used
    assert cs.cached_centroids(tmp_path, keys, 4, fingerprint="fp", device="cpu")[0, 0] == 3


def test_clustered_ivf_trains_on_its_device(monkeypatch):
    import mlpmem_lightning.knn.search.clustered as cs

    seen = []
    monkeypatch.setattr(cs, "train_centroids", lambda keys, nlist, seed, device: seen.append(device) or
                        kmeans.faiss_kmeans(np.asarray(keys, np.float32), nlist, 2, seed))
    cs.ClusteredIVF(blobs(500, 8, 4, seed=2), nlist=4, nprobe=2, device="cpu")
    assert seen == [torch.device("cpu")]
