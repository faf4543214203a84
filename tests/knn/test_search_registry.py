"""The search registry: a toy backend registered in one place runs through `mlpmem targets` and `mlpmem bench`."""

import numpy as np
import pytest
import torch

from mlpmem_lightning.cli import main
from mlpmem_lightning.core import artifacts
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.search import Backend, Searcher, choices, register, unregister
from mlpmem_lightning.knn.targets import KNNTargets, TargetSettings, build_targets


class NumpyBruteForce(Searcher):
    """Exact search in NumPy float64, a block of queries at a time: independent of every torch backend."""

    def __init__(self, keys: np.ndarray):
        self.source, self.device = keys, torch.device("cpu")
        self.keys64 = np.asarray(keys, dtype=np.float64)
        self.n, self.d = self.keys64.shape

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries.double().numpy()
        ids = np.arange(self.n)
        dist_out, ids_out = [], []
        for block in np.array_split(q, max(1, len(q) // 32)):
            dist = ((block[:, None, :] - self.keys64[None]) ** 2).sum(-1).astype(np.float32)
            order = np.lexsort((np.broadcast_to(ids, dist.shape), dist), axis=-1)[:, :k]  # (distance, id)
            dist_out.append(np.take_along_axis(dist, order, 1))
            ids_out.append(order)
        return torch.from_numpy(np.concatenate(dist_out)), torch.from_numpy(np.concatenate(ids_out))


@pytest.fixture
def toy():
    """The whole of adding a backend: one class and one registry entry."""
    register(Backend("toy", lambda ds, settings, device, chunk: NumpyBruteForce(ds.keys), indexes=("flat",),
                     help="NumPy float64 brute force (a test)"))
    yield "toy"
    unregister("toy")
    assert "toy" not in choices()


def first_rows(src, dst, n: int):
    """A datastore of the first ``n`` rows of ``src`` (real keys; all 242k rows would take the brute force hours)."""
    ds = Datastore(src)
    dst.mkdir()
    np.save(dst / "keys.npy", np.asarray(ds.keys[:n]))
    np.save(dst / "values.npy", np.asarray(ds.values[:n]))
    fields = {k: v for k, v in ds.manifest.items() if k not in ("kind", "indexes", "files")}
    artifacts.write_manifest(dst, "datastore", {**fields, "N": n, "fingerprint": f"{ds.fingerprint}-first{n}",
                                                "files": artifacts.file_records(dst, ("keys.npy", "values.npy"))})
    return dst


def test_a_toy_backend_runs_through_mlpmem_targets(toy, small_datastore, tmp_path):
    ds = first_rows(small_datastore, tmp_path / "ds", 3000)
    main(["targets", "--datastore", str(ds), "--out", str(tmp_path / "toy"), "--backend", toy, "--index", "flat",
          "--k", "32", "--keep", "16", "--chunk", "700", "--device", "cpu"])
    build_targets(ds, tmp_path / "exact", TargetSettings(k=32, keep=16, backend="torch"), device="cpu")
    got, exact = KNNTargets(tmp_path / "toy"), KNNTargets(tmp_path / "exact")
    assert got.manifest["backend"] == "toy" and got.manifest["searcher"] == "NumpyBruteForce"
    assert exact.manifest["searcher"] == "TorchExact"
    np.testing.assert_array_equal(np.asarray(got.ids), np.asarray(exact.ids))
    np.testing.assert_array_equal(np.asarray(got.probs), np.asarray(exact.probs))


def test_a_toy_backend_is_refused_an_index_it_does_not_serve(toy, tmp_path, capsys):
    from tests.knn.test_targets import make_datastore

    ds = make_datastore(tmp_path / "ds", np.random.default_rng(0).normal(size=(300, 4)), np.zeros(300))
    with pytest.raises(SystemExit) as exit_info:
        main(["targets", "--datastore", str(ds), "--out", str(tmp_path / "t"), "--backend", toy, "--index", "ivfflat",
              "--k", "8", "--keep", "4", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "the toy backend does not search --index ivfflat: use --index flat" in capsys.readouterr().err


def test_the_bench_times_a_registered_backend(toy, tmp_path):
    from mlpmem_lightning.bench.targets import bench_targets, target_backends

    assert toy in target_backends()
    rows = bench_targets([2000], tmp_path, d=8, k=16, keep=4, vocab=50, nprobe=4, sample=32, backends=(toy,))
    assert [r["backend"] for r in rows] == ["torch exact", "toy (flat)"]
    assert rows[1]["recall"] == 1.0 and rows[1]["rows_per_s"] > 0
