"""The decoder-only size ordering against the seed noise (issue #15's acceptance), against a float64 brute force."""

import numpy as np
import pandas as pd

from mlpmem_lightning.study import analysis as an

SIZES = {"n0.1m": 1e5, "n0.2m": 2e5, "n0.85m": 8.5e5, "n1.3m": 1.3e6}


def results(seeds_per_size, rng):
    """Decoder-only rows: each size at 2 token budgets (the smaller one must be ignored), with its seeds."""
    rows = []
    for i, (size, n) in enumerate(SIZES.items()):
        for tokens in (1e6, 2e6):
            for seed in range(seeds_per_size[i]):
                loss = 5.0 - 0.1 * i + rng.normal(0, 0.02) + (0.5 if tokens == 1e6 else 0.0)
                rows += [{"study": "s", "arch": "decoder", "decoder_size": size, "memory_size": None,
                          "train_tokens": tokens, "seed": seed, "split": split, "loss": loss + (split == "valid"),
                          "params_non_embedding": n, "params_total": n + 1e6, "lambda": 0.0}
                         for split in ("valid", "test")]
    return pd.DataFrame(rows)


def brute_force(df):
    """Pooled within-size variance over the sizes' largest-budget test losses, then every consecutive step."""
    t = df[(df.split == "test") & (df.train_tokens == 2e6)]
    groups = [np.asarray(t[t.decoder_size == s]["loss"], np.float64) for s in SIZES]
    ss = sum(((g - g.mean()) ** 2).sum() for g in groups if len(g) > 1)
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    sd = np.sqrt(ss / dof)
    steps = []
    for a, b in zip(groups, groups[1:]):
        noise = sd * np.sqrt(1 / len(a) + 1 / len(b))
        steps.append((a.mean() - b.mean(), noise, a.mean() - b.mean() > 2 * noise))
    return sd, dof, steps


def test_steps_and_noise_match_a_brute_force():
    df = results([2, 3, 1, 2], np.random.default_rng(0))
    sd, dof, want = brute_force(df)
    got = an.size_steps(df, "test")
    assert list(zip(got["from"], got["to"])) == list(zip(list(SIZES)[:-1], list(SIZES)[1:]))
    np.testing.assert_allclose(got["seed_sd"], sd, rtol=1e-12)
    assert (got["dof"] == dof).all() and dof == 1 + 2 + 1
    np.testing.assert_allclose(got["drop"], [w[0] for w in want], rtol=1e-12)
    np.testing.assert_allclose(got["noise"], [w[1] for w in want], rtol=1e-12)
    assert list(got["resolved"]) == [w[2] for w in want]


def test_one_seed_per_size_says_the_noise_is_not_measured():
    df = results([1, 1, 1, 1], np.random.default_rng(1))
    steps = an.size_steps(df, "test")
    assert steps["resolved"].isna().all() and (steps["dof"] == 0).all()  # the report's text: tests/study/test_report
