"""Windows, positions and sampling of LMDataModule against brute-force references."""

import numpy as np
import pytest

from mlpmem_lightning.data.windows import BudgetSampler, ShardSampler, TokenWindows


@pytest.fixture
def stream(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 1000, size=1037).astype(np.uint16)
    path = tmp_path / "train.npy"
    np.save(path, tokens)
    return path, tokens


def test_windows_follow_the_alignment_convention(stream):
    path, tokens = stream
    L = 64
    ds = TokenWindows(path, L, len(tokens))
    assert len(ds) == (len(tokens) - 1) // L
    batch = ds.__getitems__(list(range(len(ds))))
    for j in range(len(ds)):  # brute force: window j = inputs [jL, (j+1)L), labels shifted by one
        assert np.array_equal(batch["input_ids"][j].numpy(), tokens[j * L:(j + 1) * L])
        assert np.array_equal(batch["labels"][j].numpy(), tokens[j * L + 1:(j + 1) * L + 1])
        assert batch["positions"][j].item() == j * L
    # every covered row p predicts token p+1
    rows = batch["positions"][:, None].numpy() + np.arange(L)
    assert np.array_equal(tokens[rows + 1], batch["labels"].numpy())


def test_budget_sampler_permutes_each_epoch_deterministically():
    n, B = 10, 3
    order = list(BudgetSampler(n, batches=10, batch_size=B, seed=7))
    assert len(order) == 30
    for e in range(3):  # each full epoch is a permutation of all windows
        assert sorted(order[e * n:(e + 1) * n]) == list(range(n))
    assert order[:n] != order[n:2 * n]
    assert order == list(BudgetSampler(n, batches=10, batch_size=B, seed=7))
    assert order != list(BudgetSampler(n, batches=10, batch_size=B, seed=8))


def test_budget_sampler_resumes_where_it_stopped():
    full = list(BudgetSampler(13, batches=20, batch_size=4, seed=1))
    sampler = BudgetSampler(13, batches=20, batch_size=4, seed=1, start_batch=7)
    assert list(sampler) == full[7 * 4:]
    # its length stays the whole budget: Lightning restores the batch index to 7 and counts on to 20
    assert len(sampler) == len(full)


def test_budget_sampler_ranks_share_the_global_batch():
    n, B, steps = 17, 2, 6
    single = list(BudgetSampler(n, steps * 2, B, seed=3))  # one GPU, global batch 2B: steps*2 batches of B
    ranks = [list(BudgetSampler(n, steps, B, seed=3, rank=r, world_size=2)) for r in range(2)]
    for s in range(steps):
        global_batch = ranks[0][s * B:(s + 1) * B] + ranks[1][s * B:(s + 1) * B]
        assert global_batch == single[s * 2 * B:(s + 1) * 2 * B]


def test_shard_sampler_covers_each_row_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sum(shards, []) == list(range(11))


def test_datastore_shards_cut_at_batch_multiples():
    """Every rank's windows are whole batches of the one-process run (same shapes on a GPU), covering all once."""
    from mlpmem_lightning.knn.datastore import _shard

    for n, world, batch in [(1000, 2, 64), (1000, 3, 64), (65, 2, 64), (7, 4, 2), (128, 2, 64)]:
        parts = [_shard(n, r, world, batch) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(lo % batch == 0 for lo, _ in parts)
        starts = sorted(s for lo, hi in parts for s in range(lo, hi, batch))
        assert starts == list(range(0, n, batch))  # the one-process batches, none cut differently
