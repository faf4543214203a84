"""kNN temperature: p_kNN at several T from one neighbour list, the joint (T, λ) choice, and the targets' T rule,
each against a NumPy float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.knn.distributions import interpolate, label_log_probs
from mlpmem_lightning.lightning.evaluation import TokenNLL
from mlpmem_lightning.lightning.temperature_grid import DEFAULT_TEMPERATURES, check_temperatures, log_temperature_grid


def brute_label_log_prob(dist: np.ndarray, ids: np.ndarray, tokens: np.ndarray, labels: np.ndarray,
                         t: float) -> np.ndarray:
    """log Σ_{i: token_i = label} softmax(-d/T)_i over the valid neighbours, one query at a time, float64."""
    out = np.empty(len(dist))
    for q in range(len(dist)):
        valid = ids[q] >= 0
        logits = -dist[q][valid].astype(np.float64) / t
        w = np.exp(logits - logits.max())
        w /= w.sum()
        hit = tokens[q][valid] == labels[q]
        out[q] = np.log(w[hit].sum()) if hit.any() else -np.inf
    return out


def neighbours(q: int = 40, k: int = 12, vocab: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    dist = np.sort(rng.uniform(0.0, 30.0, (q, k)), axis=1).astype(np.float32)
    ids = rng.integers(0, 1000, (q, k))
    ids[:3, -4:] = -1  # fewer than k found
    tokens = rng.integers(0, vocab, (q, k))
    labels = rng.integers(0, vocab, q)
    return dist, ids, tokens, labels


def test_label_log_probs_at_every_temperature_match_brute_force():
    dist, ids, tokens, labels = neighbours()
    temps = [0.25, 1.0, 4.0, 64.0]
    got = label_log_probs(*(torch.from_numpy(a) for a in (dist, ids, tokens, labels)), temps).numpy()
    assert got.shape == (len(temps), len(dist)) and got.dtype == np.float64
    for row, t in zip(got, temps):
        np.testing.assert_allclose(row, brute_label_log_prob(dist, ids, tokens, labels, t), rtol=1e-12, atol=1e-12)


class Logged:
    """Stands in for a LightningModule: records what it logs."""

    def __init__(self):
        self.values = {}

    def log(self, name, value, **_):
        self.values[name] = float(value)

    def log_dict(self, values, **_):
        for name, value in values.items():
            self.log(name, value)


@pytest.mark.parametrize("fixed", [None, 0.5])
def test_joint_choice_of_temperature_and_lambda_is_the_brute_force_minimum(fixed):
    dist, ids, tokens, labels = neighbours(q=60, seed=1)
    rng = np.random.default_rng(2)
    lp_lm = np.log(rng.uniform(0.02, 0.6, len(dist)))
    temps, lambdas = [0.5, 2.0, 8.0, 32.0], [0.0, 0.25, 0.5, 0.75, 1.0]
    metric = TokenNLL(len(temps) * len(lambdas))
    lp_knn = label_log_probs(*(torch.from_numpy(a) for a in (dist, ids, tokens, labels)), temps)
    lam = torch.tensor(lambdas, dtype=torch.float64)
    for a, b in ((0, 25), (25, 60)):  # two batches accumulate
        metric.update(torch.stack([-interpolate(torch.from_numpy(lp_lm[a:b]), lp[a:b], lam) for lp in lp_knn]))
    module = Logged()
    log_temperature_grid(module, metric, lam, torch.tensor(temps, dtype=torch.float64), "val", fixed)

    # brute force: mean NLL of every (T, λ) pair in float64, then the minimum
    nll = np.empty((len(temps), len(lambdas)))
    for i, t in enumerate(temps):
        p_knn = np.exp(brute_label_log_prob(dist, ids, tokens, labels, t))
        for j, x in enumerate(lambdas):
            with np.errstate(divide="ignore"):  # λ = 1 where no neighbour carries the label: an infinite NLL
                nll[i, j] = -np.mean(np.log((1 - x) * np.exp(lp_lm) + x * p_knn))
    if fixed is None:
        i, j = np.unravel_index(np.argmin(nll), nll.shape)
    else:
        j = lambdas.index(fixed)
        i = int(np.argmin(nll[:, j]))
    assert module.values["val/temperature"] == temps[i] and module.values["val/lambda"] == lambdas[j]
    assert module.values["val/loss"] == pytest.approx(nll[i, j], rel=1e-10)
    for t, row in zip(temps, nll):  # the best ppl of each T, and the λ curve of the chosen T
        assert module.values[f"val/ppl_T_{t:g}"] == pytest.approx(np.exp(row.min()), rel=1e-6)
        assert module.values[f"val/lambda_T_{t:g}"] == lambdas[int(np.argmin(row))]
    for x, v in zip(lambdas, nll[i]):
        assert module.values[f"val/ppl_lambda_{x:.2f}"] == pytest.approx(np.exp(v), rel=1e-6)
    assert module.values["val/temperature_at_edge"] == float(i in (0, len(temps) - 1))


def test_default_grid_and_bad_grids():
    assert DEFAULT_TEMPERATURES[0] == 0.125 and DEFAULT_TEMPERATURES[-1] == 1024
    assert all(b == 2 * a for a, b in zip(DEFAULT_TEMPERATURES, DEFAULT_TEMPERATURES[1:]))
    for bad in ([], [1.0, 0.0], [float("inf")]):
        with pytest.raises(UserError, match="temperature"):
            check_temperatures(bad)


@pytest.mark.integration
def test_targets_rule_is_scale_times_the_brute_force_median_distance(small_datastore, monkeypatch):
    from mlpmem_lightning.knn.datastore import Datastore
    from mlpmem_lightning.knn.settings import TargetSettings
    from mlpmem_lightning.knn.temperature import SAMPLE_ROWS, median_neighbour_distance, scaled_temperature

    settings = TargetSettings(index="flat", k=8, backend="torch")
    ds, rows = Datastore(small_datastore), 64
    keys = np.asarray(ds.keys, dtype=np.float64)
    sample = np.sort(np.random.default_rng(0).choice(len(ds), size=rows, replace=False))
    q = keys[sample]
    d = (q ** 2).sum(1)[:, None] + (keys ** 2).sum(1)[None, :] - 2 * q @ keys.T
    d[np.arange(rows), sample] = np.inf  # the query's own row is not its neighbour
    flat = np.sort(np.sort(d, axis=1)[:, :settings.k].ravel())
    want = flat[(len(flat) - 1) // 2]  # torch.median: the lower of the two middle values
    got = median_neighbour_distance(small_datastore, settings, rows=rows, device="cpu")
    assert got == pytest.approx(want, rel=1e-3)
    assert SAMPLE_ROWS >= 1024
    # the rule's median is the default sample's (SAMPLE_ROWS rows), computed once here and handed back by a spy
    from mlpmem_lightning.knn import temperature

    full, calls = median_neighbour_distance(small_datastore, settings, device="cpu"), []
    monkeypatch.setattr(temperature, "median_neighbour_distance", lambda ds, s, **kw: calls.append((ds, s, kw)) or full)
    assert scaled_temperature(small_datastore, settings, 0.5) == pytest.approx(0.5 * full, rel=1e-12)
    assert calls == [(small_datastore, settings, {})]
