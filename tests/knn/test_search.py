"""Search backends against an independent brute-force NumPy float64 reference; index files and manifests."""

import json

import numpy as np
import pytest
import torch

from mlpmem_lightning.core import artifacts
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.index import build_index, index_path, load_index
from mlpmem_lightning.knn.search import FaissSearcher, TorchExact, TorchIVF, make_searcher
from mlpmem_lightning.knn.search.base import ieee_fp32_matmul


def reference(q: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared L2 in float64, reported as float32 (the output precision); stable sort = (dist, id)."""
    dist = ((q.astype(np.float64)[:, None, :] - keys.astype(np.float64)[None]) ** 2).sum(-1).astype(np.float32)
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(dist, ids, 1)
    pad = k - ids.shape[1]
    if pad > 0:
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
    return d, ids


def make_datastore(path, keys: np.ndarray, fingerprint: str = "fp0"):
    path.mkdir(parents=True, exist_ok=True)
    keys = keys.astype(np.float16)
    np.save(path / "keys.npy", keys)
    np.save(path / "values.npy", (np.arange(len(keys)) % 97).astype(np.int32))
    artifacts.write_manifest(path, "datastore", {"N": len(keys), "d": keys.shape[1], "fingerprint": fingerprint,
                                                 "layer": -1, "seq_len": 8})
    return path


def clustered(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)) * 3
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, d))).astype(np.float16)


def integer_keys(n: int, d: int, seed: int) -> np.ndarray:
    """Coordinates in [-2, 2]: every distance is an exact small integer, so ties abound."""
    return np.random.default_rng(seed).integers(-2, 3, (n, d)).astype(np.float16)


def run(searcher, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d, i = searcher.search(torch.from_numpy(q.astype(np.float32)), k)
    assert d.dtype == torch.float32 and i.dtype == torch.int64 and d.shape == i.shape == (len(q), k)
    return d.numpy(), i.numpy()


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / len(b) for a, b in zip(ids, exact)]))


def test_torch_exact_random_equals_reference():
    rng = np.random.default_rng(0)
    keys = (rng.standard_normal((3000, 16)) + 5).astype(np.float16)  # an offset mean: cancellation
    q = (rng.standard_normal((64, 16)) + 5).astype(np.float32)
    searcher = TorchExact(keys, chunk=512, query_block=16)
    d, i = run(searcher, q, 40)
    rd, ri = reference(q, keys, 40)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)
    assert searcher.stats["fallback_rows"] == 0  # continuous data: certified without the full scan


@pytest.mark.parametrize("extra", [0, 8, None, 4000])
@pytest.mark.parametrize("k", [1, 7, 64, 300])
def test_torch_exact_ties_equal_reference(extra, k):
    keys, q = integer_keys(1500, 3, 1), integer_keys(40, 3, 2).astype(np.float32)
    searcher = TorchExact(keys, chunk=256, extra=extra)
    d, i = run(searcher, q, k)
    rd, ri = reference(q, keys, k)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


def test_torch_exact_all_tied_boundary_and_certified_ties():
    keys = np.zeros((600, 4), np.float16)
    keys[::7] = 1  # 86 keys at distance 4, the rest tied at 0 across every chunk
    searcher = TorchExact(keys, chunk=64)
    d, i = run(searcher, np.zeros((3, 4), np.float32), 10)
    np.testing.assert_array_equal(i, np.tile([1, 2, 3, 4, 5, 6, 8, 9, 10, 11], (3, 1)))
    assert (d == 0).all() and searcher.stats["fallback_rows"] == 3
    # a tie group smaller than `extra` at the boundary is settled without the fallback
    keys = np.full((500, 2), 2, np.float16)
    keys[:30] = 0
    keys[[100, 5, 300, 7]] = [[1, 0], [1, 0], [0, 1], [0, -1]]  # four keys tied at distance 1
    searcher = TorchExact(keys, chunk=128, extra=16)
    d, i = run(searcher, np.zeros((1, 2), np.float32), 29)
    rd, ri = reference(np.zeros((1, 2), np.float32), keys, 29)
    np.testing.assert_array_equal(i, ri)
    assert searcher.stats["fallback_rows"] == 0


def test_k_larger_than_n_pads(tmp_path):
    keys = integer_keys(20, 4, 3)
    q = integer_keys(5, 4, 4).astype(np.float32)
    ds = make_datastore(tmp_path / "ds", keys)
    build_index(ds, "ivfflat", nlist=4, train_size=20)
    rd, ri = reference(q, keys, 30)
    for s in (TorchExact(keys), make_searcher(ds, "flat", backend="faiss"),
              make_searcher(ds, "ivfflat", backend="torch", nprobe=4)):
        d, i = run(s, q, 30)
        np.testing.assert_array_equal(i, ri)
        assert np.isinf(d[:, 20:]).all() and (i[:, 20:] == -1).all()


def test_short_probe_pads_and_stays_sorted(tmp_path):
    keys = clustered(2000, 8, 16, 18)
    q = clustered(40, 8, 16, 19).astype(np.float32)
    ds = make_datastore(tmp_path / "ds", keys)
    build_index(ds, "ivfflat", nlist=64, train_size=2000)
    for backend in ("torch", "faiss"):
        d, i = run(make_searcher(ds, "ivfflat", backend=backend, nprobe=1), q, 200)  # one list: < 200 keys
        assert (i == -1).any() and ((i == -1) == np.isinf(d)).all()
        assert (d[:, 1:] >= d[:, :-1]).all()  # +inf padding last
        rd, ri = reference(q, keys, 2000)
        for r in range(len(q)):  # each found id's distance: exact for torch, faiss's own (close) for faiss
            found = i[r][i[r] >= 0]
            exact = rd[r][np.argsort(ri[r])][found]
            if backend == "torch":
                np.testing.assert_array_equal(d[r][: len(found)], exact)
            else:
                np.testing.assert_allclose(d[r][: len(found)], exact, rtol=1e-4, atol=1e-3)


def test_faiss_flat_matches_torch_exact(tmp_path):
    keys = clustered(4000, 32, 20, 5)
    q = clustered(50, 32, 20, 6).astype(np.float32)
    ds = make_datastore(tmp_path / "ds", keys)
    td, ti = run(make_searcher(ds, "flat", backend="torch", chunk=1024), q, 25)
    fs = make_searcher(ds, "flat", backend="faiss")
    assert isinstance(fs, FaissSearcher)
    fd, fi = run(fs, q, 25)
    assert all(set(a) == set(b) for a, b in zip(ti, fi))
    np.testing.assert_allclose(fd, td, rtol=1e-4, atol=1e-3)
    rd, ri = run(make_searcher(ds, "flat", backend="faiss", rerank=True), q, 25)
    np.testing.assert_array_equal(ri, ti)  # exact re-rank: same ids, same order, same float32 values
    np.testing.assert_array_equal(rd, td)


@pytest.mark.parametrize("kind", ["ivfflat", "ivfpq"])
def test_torch_ivf_full_probe_equals_exact(tmp_path, kind):
    keys = integer_keys(3000, 8, 7)
    q = integer_keys(30, 8, 8).astype(np.float32)
    ds = make_datastore(tmp_path / "ds", keys)
    build_index(ds, kind, nlist=16, m=4, nbits=4, train_size=2000)
    searcher = make_searcher(ds, kind, backend="torch", nprobe=16)
    assert isinstance(searcher, TorchIVF)
    d, i = run(searcher, q, 50)
    rd, ri = reference(q, keys, 50)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(d, rd)


def test_recall_of_approximate_indexes(tmp_path):
    keys = clustered(20000, 32, 64, 9)
    q = clustered(200, 32, 64, 10).astype(np.float32)
    ds = make_datastore(tmp_path / "ds", keys)
    _, exact = run(TorchExact(keys, chunk=8192), q, 20)
    build_index(ds, "ivfflat", nlist=64, train_size=10000)
    build_index(ds, "ivfpq", nlist=64, m=8, nbits=8, train_size=10000)
    got = {
        "ivfflat/faiss": recall(run(make_searcher(ds, "ivfflat", backend="faiss", nprobe=16), q, 20)[1], exact),
        "ivfflat/torch": recall(run(make_searcher(ds, "ivfflat", backend="torch", nprobe=16), q, 20)[1], exact),
        "ivfpq/faiss": recall(run(make_searcher(ds, "ivfpq", backend="faiss", nprobe=16), q, 20)[1], exact),
        "ivfpq/faiss+rerank": recall(run(make_searcher(ds, "ivfpq", backend="faiss", nprobe=16, rerank=True),
                                         q, 20)[1], exact),
    }
    print(got)
    assert got["ivfflat/faiss"] >= 0.9 and got["ivfflat/torch"] >= 0.9
    assert got["ivfpq/faiss"] >= 0.5
    assert got["ivfpq/faiss+rerank"] >= max(got["ivfpq/faiss"], 0.9)


def test_index_roundtrip_manifest_and_reuse(tmp_path, caplog):
    keys = clustered(3000, 16, 8, 11)
    ds = make_datastore(tmp_path / "ds", keys)
    before = artifacts.read_manifest(ds, "datastore")
    entry = build_index(ds, "ivfpq", nlist=8, m=4, nbits=6, train_size=2000, seed=3, add_chunk=700)
    after = artifacts.read_manifest(ds, "datastore")
    assert {k: after[k] for k in before} == before  # every other field kept
    assert after["indexes"]["ivfpq"] == entry
    assert entry["file"] == "index_ivfpq.faiss" and entry["ntotal"] == 3000
    assert {k: entry[k] for k in ("nlist", "m", "nbits", "train_size", "seed")} == {
        "nlist": 8, "m": 4, "nbits": 6, "train_size": 2000, "seed": 3}
    assert entry["sha256"] == artifacts.hash_file(index_path(ds, "ivfpq"))
    index = load_index(ds, "ivfpq")
    assert index.ntotal == 3000 and index.nlist == 8
    mtime = index_path(ds, "ivfpq").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="mlpmem_lightning.knn.search"):
        assert build_index(ds, "ivfpq", nlist=8, m=4, nbits=6, train_size=2000, seed=3) == entry
    assert "reusing" in caplog.text and index_path(ds, "ivfpq").stat().st_mtime_ns == mtime
    flat = build_index(ds, "flat")  # a second kind joins the first
    assert set(artifacts.read_manifest(ds, "datastore")["indexes"]) == {"ivfpq", "flat"} and flat["ntotal"] == 3000
    other = build_index(ds, "ivfpq", nlist=4, m=4, nbits=6, train_size=2000, seed=3)
    assert other["nlist"] == 4 and load_index(ds, "ivfpq").nlist == 4


def test_same_seed_same_index_bytes(tmp_path):
    keys = clustered(2000, 16, 8, 12)
    a = build_index(make_datastore(tmp_path / "a", keys), "ivfflat", nlist=8, train_size=500, seed=1)
    b = build_index(make_datastore(tmp_path / "b", keys), "ivfflat", nlist=8, train_size=500, seed=1)
    assert a["sha256"] == b["sha256"]


def test_stale_or_tampered_index_is_refused(tmp_path):
    keys = clustered(1000, 8, 4, 13)
    ds = make_datastore(tmp_path / "ds", keys)
    build_index(ds, "ivfflat", nlist=4, train_size=1000)
    with open(index_path(ds, "ivfflat"), "ab") as f:
        f.write(b"x")
    stale = r"does not match its datastore \(recorded != found: sha256: .*\): rebuild with `mlpmem targets"
    with pytest.raises(UserError, match=stale):
        load_index(ds, "ivfflat")
    entry = build_index(ds, "ivfflat", nlist=4, train_size=1000)  # a damaged file is rebuilt, not reused
    load_index(ds, "ivfflat")
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["indexes"]["ivfflat"]["ntotal"] = 999
    (ds / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not match its datastore"):
        make_searcher(ds, "ivfflat", backend="faiss")
    # new keys (new fingerprint) while the old file and its intact entry survived
    make_datastore(ds, clustered(1000, 8, 4, 14), fingerprint="fp1")
    manifest = json.loads((ds / "manifest.json").read_text())
    (ds / "manifest.json").write_text(json.dumps({**manifest, "indexes": {"ivfflat": entry}}))
    with pytest.raises(UserError, match="does not match its datastore"):
        load_index(ds, "ivfflat")


def test_nan_keys_are_refused(tmp_path):
    keys = clustered(500, 8, 4, 15).astype(np.float32)
    keys[321, 3] = np.inf  # float16 overflow in a real datastore
    ds = make_datastore(tmp_path / "ds", keys)
    for backend in ("torch", "faiss"):
        with pytest.raises(UserError, match="row 321 is NaN/inf"):
            make_searcher(ds, "flat", backend=backend, chunk=100)
    with pytest.raises(UserError, match="NaN/inf"):
        build_index(ds, "ivfflat", nlist=4, train_size=500)
    with pytest.raises(UserError, match="NaN/inf"):
        TorchIVF(keys.astype(np.float16), np.zeros((2, 8), np.float32))


def test_keys_loaded_to_the_device_are_the_stored_float16_and_overflow_is_refused():
    """load_keys gives the float16 of the stored keys exactly (NumPy's cast as reference), and refuses a float32
    key that is finite on the host but overflows float16 (the row is named)."""
    from mlpmem_lightning.knn.search.base import load_keys

    keys = clustered(700, 8, 4, 21).astype(np.float32)
    got = load_keys(keys, torch.device("cpu"), chunk=128)
    assert got.dtype == torch.float16 and np.array_equal(got.numpy(), keys.astype(np.float16))
    keys[517, 2] = 1e6  # finite in float32, inf in float16
    with pytest.raises(UserError, match="row 517 is NaN/inf"):
        load_keys(keys, torch.device("cpu"), chunk=128)


def test_bad_settings_and_missing_index(tmp_path):
    ds = make_datastore(tmp_path / "ds", clustered(300, 12, 4, 16))
    cases = [
        (dict(kind="ivfflat", nlist=301), "nlist=301 must be in"),
        (dict(kind="ivfpq", nlist=4, m=5), "m=5 must divide d=12"),
        (dict(kind="ivfpq", nlist=4, m=4, nbits=9), "needs >= 512 training keys"),
        (dict(kind="ivfflat", nlist=64, train_size=32), "raise train_size"),
        (dict(kind="hnsw"), "unknown index"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UserError, match=message):
            build_index(ds, **kwargs)
    assert "indexes" not in artifacts.read_manifest(ds, "datastore") and not index_path(ds, "ivfflat").exists()
    with pytest.raises(UserError, match=r"no ivfpq index: build it with `mlpmem targets --datastore .* --index ivfpq`"):
        make_searcher(ds, "ivfpq")
    with pytest.raises(UserError, match="unknown search backend"):
        make_searcher(ds, "flat", backend="gpu")
    with pytest.raises(UserError, match="incomplete"):
        make_searcher(tmp_path, "flat")  # no manifest: not a finished datastore


def test_backend_choice_and_query_checks(tmp_path):
    ds = make_datastore(tmp_path / "ds", clustered(400, 8, 4, 17))
    build_index(ds, "ivfpq", nlist=4, m=2, nbits=4, train_size=400)
    assert isinstance(make_searcher(ds, "flat"), FaissSearcher)  # auto on CPU
    assert isinstance(make_searcher(ds, "flat", backend="torch"), TorchExact)
    assert isinstance(make_searcher(ds, "ivfpq", backend="torch", nprobe=2), TorchIVF)
    s = make_searcher(ds, "flat", backend="torch")
    with pytest.raises(ValueError, match="NaN"):
        s.search(torch.full((2, 8), float("nan")), 3)
    with pytest.raises(ValueError, match=r"\[Q, 8\]"):
        s.search(torch.zeros(2, 7), 3)


def test_fp32_matmul_precision_restored():
    old = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        with ieee_fp32_matmul(torch.device("cpu")):
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = old


def test_search_under_autocast_stays_float32():
    """Lightning's bf16-mixed evaluation wraps the kNN-LM step in autocast: results must not change."""
    keys = clustered(4000, 64, 10, seed=5)
    q = torch.from_numpy(keys[:64].astype(np.float32)) + 0.01
    s = TorchExact(keys)
    plain = s.search(q, 50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = s.search(q, 50)
    assert torch.equal(plain[1], mixed[1]) and torch.equal(plain[0], mixed[0])
    np.testing.assert_array_equal(plain[1].numpy(), reference(q.numpy(), keys, 50)[1])
