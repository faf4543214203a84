"""The sparse memory loss against a dense float64 reference built here (NumPy scatter, xlogy KL, autograd)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlpmem_lightning.bench.memory_peak import LOSS_VARIANTS, peak_memory_step
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.lightning.losses import fused_memory_loss, memory_loss

T, V, K = 48, 64, 8


def sparse_targets(seed: int = 0, shuffle_pads: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Random duplicate-free targets as stored on disk: int32 ids (-1 pads), float16 probs (0 pads).

    Row 0 has a single entry, row 1 none at all, row 2 is full; the rest keep 1..K entries, with the
    pads at the end (as targets.py writes them) or, if ``shuffle_pads``, scattered among the entries.
    """
    rng = np.random.default_rng(seed)
    ids = np.full((T, K), -1, np.int32)
    probs = np.zeros((T, K), np.float16)
    for r in range(T):
        n = {0: 1, 1: 0, 2: K}.get(r, int(rng.integers(1, K + 1)))
        ids[r, :n] = rng.choice(V, size=n, replace=False)
        probs[r, :n] = rng.dirichlet(np.full(n, 0.3)) if n else []
        if shuffle_pads and r % 2:
            perm = rng.permutation(K)
            ids[r], probs[r] = ids[r, perm], probs[r, perm]
    return ids, probs


def dense_reference(logits: np.ndarray, ids: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                    alpha: float) -> torch.Tensor:
    """α·KL + (1−α)·CE in float64 with a dense [T, V] target: differentiable in ``logits``."""
    target = np.zeros((T, V))
    rows, cols = np.nonzero(ids >= 0)
    np.add.at(target, (rows, ids[rows, cols]), probs[rows, cols].astype(np.float64))
    mass = target.sum(1, keepdims=True)
    target = np.divide(target, mass, out=np.zeros_like(target), where=mass > 0)  # fp16 rounding renormalised
    p = torch.from_numpy(target)
    logq = torch.log_softmax(logits, dim=1)
    kl = (torch.special.xlogy(p, p) - torch.where(p > 0, p * logq, 0.0)).sum(1).mean()
    ce = -logq[torch.arange(T), torch.from_numpy(labels)].mean()
    return alpha * kl + (1 - alpha) * ce, kl, ce


def batch(seed: int = 0, scale: float = 3.0):
    ids, probs = sparse_targets(seed)
    rng = np.random.default_rng(seed + 100)
    logits = rng.normal(scale=scale, size=(T, V))
    labels = rng.integers(0, V, size=T)
    return logits, ids, probs, labels


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_equals_dense_reference_values_and_gradients(alpha, seed):
    logits, ids, probs, labels = batch(seed)
    ref_logits = torch.tensor(logits, requires_grad=True)
    ref, ref_kl, ref_ce = dense_reference(ref_logits, ids, probs, labels, alpha)
    ref.backward()

    x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    out = memory_loss(x, torch.from_numpy(ids), torch.from_numpy(probs), torch.from_numpy(labels), alpha)
    out["loss"].backward()
    for key, want in (("loss", ref), ("kl", ref_kl), ("ce", ref_ce)):
        assert out[key].dtype == torch.float32
        assert out[key].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(x.grad.double(), ref_logits.grad, rtol=1e-4, atol=1e-7)


def test_alpha_zero_is_exactly_cross_entropy_and_one_is_kl_only():
    logits, ids, probs, labels = batch(2)
    x, i, p, y = torch.tensor(logits, dtype=torch.float32), torch.from_numpy(ids), torch.from_numpy(probs), \
        torch.from_numpy(labels)
    assert torch.equal(memory_loss(x, i, p, y, 0.0)["loss"], F.cross_entropy(x, y))
    one = memory_loss(x, i, p, y, 1.0)
    assert torch.equal(one["loss"], one["kl"])
    # a memory giving a target token zero probability: infinite KL, but α=0 is still plain cross-entropy
    r = int(np.nonzero((ids[:, 0] >= 0) & (ids[:, 0] != labels))[0][0])
    x[r, ids[r, 0]] = float("-inf")
    assert torch.isinf(memory_loss(x, i, p, y, 0.5)["kl"])
    assert torch.equal(memory_loss(x, i, p, y, 0.0)["loss"], F.cross_entropy(x, y))


def test_batched_shapes_equal_flat():
    logits, ids, probs, labels = batch(7)
    x, i, p, y = torch.tensor(logits, dtype=torch.float32), torch.from_numpy(ids), torch.from_numpy(probs), \
        torch.from_numpy(labels)
    flat = memory_loss(x, i, p, y, 0.5)["loss"]
    assert torch.equal(memory_loss(x.view(4, 12, V), i.view(4, 12, K), p.view(4, 12, K), y.view(4, 12))["loss"], flat)
    feats, head = torch.randn(T, 16), torch.randn(V, 16)
    flat = fused_memory_loss(feats, head, i, p, y, 0.5, chunk_size=5)["loss"]
    batched = fused_memory_loss(feats.view(4, 12, 16), head, i.view(4, 12, K), p.view(4, 12, K), y.view(4, 12), 0.5,
                                chunk_size=5)["loss"]
    torch.testing.assert_close(batched, flat)


def test_kl_vanishes_when_the_memory_matches_the_targets():
    ids, probs = sparse_targets(3)
    dense = np.zeros((T, V))
    rows, cols = np.nonzero(ids >= 0)
    dense[rows, ids[rows, cols]] = probs[rows, cols]
    logits = torch.tensor(np.where(dense > 0, np.log(np.maximum(dense, 1e-30)), -1e4), dtype=torch.float32)
    out = memory_loss(logits, torch.from_numpy(ids), torch.from_numpy(probs), torch.zeros(T, dtype=torch.long), 1.0)
    assert 0 <= out["kl"].item() < 1e-5  # fp16 rows that do not sum to 1 are renormalised, so no negative KL


def test_low_precision_logits_are_computed_in_float32():
    logits, ids, probs, labels = batch(4)
    half = torch.tensor(logits, dtype=torch.bfloat16)
    ref, _, _ = dense_reference(half.double(), ids, probs, labels, 0.5)
    out = memory_loss(half, torch.from_numpy(ids), torch.from_numpy(probs), torch.from_numpy(labels), 0.5)
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 48, 1000])
@pytest.mark.parametrize("train_head", [True, False])
def test_fused_equals_dense_reference(chunk_size, train_head):
    _, ids, probs, labels = batch(5)
    rng = np.random.default_rng(6)
    feats, head = rng.normal(size=(T, 16)), rng.normal(scale=0.5, size=(V, 16))
    ref_x = torch.tensor(feats, requires_grad=True)
    ref_w = torch.tensor(head, requires_grad=train_head)
    ref, ref_kl, ref_ce = dense_reference(ref_x @ ref_w.T, ids, probs, labels, 0.3)
    ref.backward()

    x = torch.tensor(feats, dtype=torch.float32, requires_grad=True)
    w = torch.tensor(head, dtype=torch.float32, requires_grad=train_head)
    out = fused_memory_loss(x, w, torch.from_numpy(ids), torch.from_numpy(probs), torch.from_numpy(labels), 0.3,
                            chunk_size=chunk_size)
    (2.0 * out["loss"]).backward()  # an upstream gradient other than 1 must scale the result
    for key, want in (("loss", ref), ("kl", ref_kl), ("ce", ref_ce)):
        assert out[key].item() == pytest.approx(want.item(), rel=1e-5), key
    torch.testing.assert_close(x.grad.double(), 2 * ref_x.grad, rtol=1e-4, atol=1e-6)
    if train_head:
        torch.testing.assert_close(w.grad.double(), 2 * ref_w.grad, rtol=1e-4, atol=1e-6)
    else:
        assert w.grad is None


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_is_a_user_error(alpha):
    logits, ids, probs, labels = batch(0)
    args = torch.from_numpy(ids), torch.from_numpy(probs), torch.from_numpy(labels)
    with pytest.raises(UserError, match="alpha"):
        memory_loss(torch.tensor(logits), *args, alpha)
    with pytest.raises(UserError, match="alpha"):
        fused_memory_loss(torch.zeros(T, 4), torch.zeros(V, 4), *args, alpha)


def test_peak_memory_step_variants_agree():
    """The measurement helper (run by hand at full size) trains the same loss three ways."""
    rows = [peak_memory_step(v, size="mem-200k", tokens=64, vocab=256, k=8, device="cpu", chunk_size=16)
            for v in LOSS_VARIANTS]
    assert {r["variant"] for r in rows} == {"dense", "sparse", "fused"}
    # (peak_bytes is only meaningful in a fresh process on CPU: compare_peak_memory's job)
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5) == pytest.approx(rows[2]["loss"], rel=1e-5)
