"""`analysis`: the power-law fit against known truths, the comparisons against brute force, the notebooks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import analysis as an
from tests.helpers import ROOT

DATA = ROOT / "tests" / "fixtures" / "results_small.csv"
E, A, ALPHA = 1.8, 50.0, 0.3
X = np.geomspace(1e6, 1e9, 10)  # three decades, ten sizes


def truth(x):
    return E + A * np.asarray(x) ** -ALPHA


# ----------------------------------------------------------------------------------------------
# fit_power_law
# ----------------------------------------------------------------------------------------------

def test_fit_recovers_a_noise_free_power_law():
    fit = an.fit_power_law(X, truth(X), bootstrap=0)
    assert fit["E"] == pytest.approx(E, rel=1e-4)
    assert fit["A"] == pytest.approx(A, rel=1e-3)
    assert fit["alpha"] == pytest.approx(ALPHA, rel=1e-4)
    assert fit["n"] == 10 and fit["n_bootstrap"] == 0


def test_fit_recovers_noisy_power_laws_and_the_interval_covers_alpha():
    """20 draws with 2% multiplicative noise: estimates centred on the truth, the 95% interval covers α in ≥ 80%."""
    fits = []
    for draw in range(20):
        rng = np.random.default_rng(1000 + draw)
        loss = truth(X) * np.exp(0.02 * rng.standard_normal(X.size))
        fits.append(an.fit_power_law(X, loss, n_starts=3, bootstrap=40, seed=draw))
    covered = [f["alpha_ci"][0] <= ALPHA <= f["alpha_ci"][1] for f in fits]
    assert np.mean(covered) >= 0.8
    assert np.mean([f["E_ci"][0] <= E <= f["E_ci"][1] for f in fits]) >= 0.8
    assert np.median([f["alpha"] for f in fits]) == pytest.approx(ALPHA, abs=0.08)
    assert np.median([f["E"] for f in fits]) == pytest.approx(E, abs=0.1)
    assert np.median([math.log(f["A"]) for f in fits]) == pytest.approx(math.log(A), abs=math.log(3))
    for f in fits:
        assert f["E"] > 0 and f["A"] > 0 and f["alpha"] > 0
        assert f["alpha_ci"][0] <= f["alpha_ci"][1]


def test_one_wild_run_barely_moves_the_huber_fit():
    """The robust loss: a diverged run (loss ×1.5) changes the predictions far less than it would a squared loss."""
    loss = truth(X).copy()
    loss[4] *= 1.5
    fit = an.fit_power_law(X, loss, bootstrap=0)
    others = np.delete(np.arange(X.size), 4)
    assert np.max(np.abs(an.predict(fit, X[others]) / truth(X[others]) - 1)) < 0.01


def test_repeated_sizes_are_separate_points():
    """Two seeds per size, 1% either side of the truth: every run counts (n), and the curve runs between them.

    With Chinchilla's δ the loss is nearly absolute, so anywhere between two seeds costs the same; with a
    large δ it is least squares on logs, which passes through their geometric middle exactly.
    """
    x = np.repeat(X[::2], 2)
    loss = truth(x) * np.tile([1.01, 1 / 1.01], 5)
    fit = an.fit_power_law(x, loss, bootstrap=0)
    assert fit["n"] == 10
    assert np.all(np.abs(np.log(an.predict(fit, X[::2]) / truth(X[::2]))) <= math.log(1.01) + 1e-6)
    squares = an.fit_power_law(x, loss, bootstrap=0, delta=1.0)
    assert an.predict(squares, X[::2]) == pytest.approx(truth(X[::2]), rel=1e-5)


@pytest.mark.parametrize("x", [[1e6, 1e7], [1e6, 1e6, 1e7, 1e7, 1e7]])
def test_fewer_than_three_sizes_is_a_user_error(x):
    with pytest.raises(UserError, match="need at least 3 points"):
        an.fit_power_law(x, truth(x))


def test_non_positive_values_are_a_user_error():
    with pytest.raises(UserError, match="finite and positive"):
        an.fit_power_law([1e6, 1e7, 0.0], [3.0, 2.5, 2.0])


def test_band_brackets_the_bootstrap_fits():
    fit = an.fit_power_law(X, truth(X) * np.exp(0.02 * np.random.default_rng(0).standard_normal(X.size)),
                           n_starts=3, bootstrap=30)
    lo, hi = an.band(fit, X)
    curves = np.array([E_ + A_ * X ** -a_ for E_, A_, a_ in fit["samples"]])
    assert np.all(lo <= np.median(curves, axis=0)) and np.all(np.median(curves, axis=0) <= hi)
    assert np.all(lo >= curves.min(axis=0) - 1e-12) and np.all(hi <= curves.max(axis=0) + 1e-12)


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

def row(arch, size, seed, split, params, flops, loss, study="s", memory="", **extra):
    return {"study": study, "trial": 0, "arch": arch, "decoder_size": size, "memory_size": memory,
            "params_decoder": params, "params_memory": 0, "params_total": params, "train_tokens": 1000,
            "flops_train_total": flops, "lambda": 0.0, "split": split, "loss": loss, "ppl": math.exp(loss),
            "seed": seed, **extra}


@pytest.fixture(scope="module")
def tiny():
    """3 decoders (2 seeds at the smallest), their kNN-LMs, memories on 2 of them, a second study, valid rows."""
    dec = {"a": (100, 1000, 4.0), "b": (200, 2100, 3.5), "c": (400, 4000, 3.2)}
    rows = []
    for size, (p, f, loss) in dec.items():
        rows.append(row("decoder", size, 0, "test", p, f, loss))
        rows.append(row("knn_lm", size, 0, "test", p, f * 1.1, loss - 0.1))
        rows.append(row("decoder", size, 0, "valid", p, f, loss + 0.05))
    rows.append(row("decoder", "a", 1, "test", 100, 1000, 4.2))
    rows.append(row("decoder", "a", 0, "test", 100, 1000, 4.0))  # the same model again (a shared decoder)
    rows.append(row("knn_lm", "a", 1, "test", 100, 1100, 4.0))
    rows.append(row("mlp_memory", "a", 0, "test", 200, 2000, 3.6, memory="m1"))
    rows.append(row("mlp_memory", "b", 0, "test", 300, 3900, 3.3, memory="m2"))
    rows.append(row("mlp_memory", "c", 0, "test", 800, 9000, 3.0, memory="m3"))
    rows.append(row("decoder", "a", 0, "test", 200, 2000, 9.0, study="other"))  # must never pair with study "s"
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_fits(tiny):
    return an.fit_all(tiny, bootstrap=10, n_starts=2)


def test_clean_counts_a_repeated_model_once(tiny, tiny_fits):
    cleaned = an.clean(tiny)
    assert len(cleaned) == len(tiny) - 1
    assert tiny_fits["decoder"]["params_total"]["n"] == 5  # a×2 seeds, b, c, and the other study's run


def test_fit_all_fits_each_arch_and_axis_and_skips_thin_ones(tiny):
    thin = tiny[~((tiny["arch"] == "mlp_memory") & (tiny["decoder_size"] == "c"))]
    fits = an.fit_all(thin, bootstrap=0, n_starts=2)
    assert set(fits) == {"decoder", "knn_lm"}
    assert set(fits["decoder"]) == set(an.X_AXES) - {"params_non_embedding"}  # the tiny table has no such column
    assert set(fits.skipped) == {("mlp_memory", "params_total"), ("mlp_memory", "flops_train_total")}
    assert all("need at least 3 points" in why for why in fits.skipped.values())


def test_fit_all_with_nothing_fittable_is_a_user_error(tiny):
    with pytest.raises(UserError, match="no architecture can be fitted"):
        an.fit_all(tiny[tiny["decoder_size"] == "a"], bootstrap=0, n_starts=2)


def brute_force_direct(df: pd.DataFrame, axis: str, comparison: str, rtol: float = 0.01) -> dict:
    """The measured pairs, by plain loops: seed means per model, then the rule of the docstring."""
    df = df.copy()
    df["memory_size"] = df["memory_size"].fillna("")
    seen, groups = set(), {}
    for r in df[df["split"] == "test"].to_dict("records"):
        ident = (r["study"], r["arch"], r["decoder_size"], r["memory_size"], r["seed"], r["split"])
        if ident in seen:
            continue
        seen.add(ident)
        groups.setdefault((r["study"], r["arch"], r["decoder_size"], r["memory_size"], r[axis]), []).append(r["loss"])
    means = {k: sum(v) / len(v) for k, v in groups.items()}
    out = {}
    for (study, arch, size, mem, x), loss in means.items():
        if arch == "decoder":
            continue
        partners = [(abs(math.log(k[4] / x)), k[4], v) for k, v in means.items()
                    if k[1] == "decoder" and k[0] == study]
        dist, dx, dloss = min(partners)
        if comparison == "parameters" and dist > math.log1p(rtol):
            continue
        out[(arch, size, mem)] = (dx, loss - dloss)
    return out


# matched compute is against the decoder-only frontier (tests/study/test_report_honesty.py), not a nearest run;
# the tiny table has no non-embedding counts, so parameters are total parameters
@pytest.mark.parametrize("comparison,axis", [("parameters", "params_total")])
def test_direct_comparison_matches_brute_force(tiny, tiny_fits, comparison, axis):
    got = an.matched_comparison(tiny, tiny_fits)
    got = got[(got["method"] == "direct") & (got["comparison"] == comparison)]
    got = {(r.arch, r.decoder_size, r.memory_size): (r.decoder_x, r.delta) for r in got.itertuples()}
    expected = brute_force_direct(tiny, axis, comparison)
    assert expected and set(got) == set(expected)  # the tiny table has pairs on both axes
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_direct_parameter_pairs_on_the_tiny_table(tiny, tiny_fits):
    """Spelled out: kNN-LMs pair with their own decoders; only memory m1 (200 params) has an equal-size decoder."""
    got = an.matched_comparison(tiny, tiny_fits)
    got = got[(got["method"] == "direct") & (got["comparison"] == "parameters")]
    assert sorted(zip(got["arch"], got["decoder_size"])) == \
        [("knn_lm", "a"), ("knn_lm", "b"), ("knn_lm", "c"), ("mlp_memory", "a")]
    m1 = got[got["arch"] == "mlp_memory"].iloc[0]
    assert m1["delta"] == pytest.approx(3.6 - 3.5)


def test_fitted_comparison_reads_the_curves_at_every_observed_x(tiny, tiny_fits):
    fits = tiny_fits
    got = an.matched_comparison(tiny, fits)
    for comparison, axis in an.comparison_axes(tiny).items():
        xs = sorted(set(an.clean(tiny).query("split == 'test'")[axis].astype(float)))
        for arch in ("knn_lm", "mlp_memory"):
            rows = got[(got["method"] == "fit") & (got["comparison"] == comparison) & (got["arch"] == arch)]
            assert sorted(rows["x"]) == xs
            f, d = fits[arch][axis], fits["decoder"][axis]
            for r in rows.itertuples():
                own = f["E"] + f["A"] * r.x ** -f["alpha"]
                dec = d["E"] + d["A"] * r.x ** -d["alpha"]
                assert (r.loss, r.decoder_loss, r.delta) == pytest.approx((own, dec, own - dec))
                inside = all(g["x_min"] <= r.x <= g["x_max"] for g in (f, d))
                assert r.extrapolated == (not inside)


def test_memory_vs_knn_pairs_runs_on_the_same_decoder(tiny):
    gap = an.imitation_gaps(tiny)
    clean = tiny.drop_duplicates(subset=list(an.IDENTITY))
    expected = {}
    for m, k in itertools.product(clean.to_dict("records"), repeat=2):
        if (m["arch"], k["arch"], m["split"], k["split"]) == ("mlp_memory", "knn_lm", "test", "test") and \
                (m["study"], m["decoder_size"], m["seed"]) == (k["study"], k["decoder_size"], k["seed"]):
            expected[(m["decoder_size"], m["seed"])] = m["loss"] - k["loss"]
    assert dict(zip(zip(gap["decoder_size"], gap["seed"]), gap["gap"])) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------
# λ
# ----------------------------------------------------------------------------------------------

def test_lambda_curves_and_best_lambda_against_a_loop(tiny):
    grid = {"ppl_lambda_0.00": [20.0, 30.0, 25.0], "ppl_lambda_0.50": [18.0, np.nan, 26.0],
            "ppl_lambda_1.00": [40.0, 29.0, 27.0]}
    extra = pd.DataFrame([row("knn_lm", "a", 0, "valid", 100, 1100, 3.0),
                          row("mlp_memory", "a", 0, "valid", 200, 2000, 3.1, memory="m1"),
                          row("knn_lm", "a", 1, "valid", 100, 1100, 3.0)])
    extra["lambda"] = [0.5, 1.0, 0.0]
    for col, values in grid.items():
        extra[col] = values
    df = pd.concat([tiny, extra], ignore_index=True)  # tiny's test/decoder rows have NaN in these columns
    curves = an.lambda_curves(df)
    expected = sorted((r["arch"], r["seed"], float(c[len("ppl_lambda_"):]), r[c])
                      for r in extra.to_dict("records") for c in grid if not math.isnan(r[c]))
    assert sorted(zip(curves["arch"], curves["seed"], curves["lambda"], curves["ppl"])) == expected
    best = an.best_lambdas(df).set_index("arch")
    # seed-mean curves: kNN-LM (20, 18, 40) and (25, 26, 27) -> 22.5, 22, 33.5; memory 30, NaN, 29
    assert best.loc["knn_lm", "best_lambda"] == 0.5 and best.loc["knn_lm", "best_ppl"] == 22.0
    assert best.loc["knn_lm", "chosen_lambda"] == 0.25 and best.loc["knn_lm", "ppl_lambda_0"] == 22.5
    assert best.loc["mlp_memory", "best_lambda"] == 1.0 and best.loc["mlp_memory", "best_ppl"] == 29.0


def test_lambda_curves_without_columns_is_empty(tiny):
    assert an.lambda_curves(tiny).empty
    assert an.best_lambdas(tiny).empty  # tiny has no valid rows for kNN-LM / memory


# ----------------------------------------------------------------------------------------------
# notebooks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["scaling.ipynb", "lambda.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    """Executed by a kernel spec written for this very interpreter, so a fresh `make test` venv needs no set-up."""
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    write_kernel_spec(tmp_path / "kernels" / "mlpmem-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("MLPMEM_RESULTS", str(DATA))
    monkeypatch.setenv("MLPMEM_BOOTSTRAP", "20")
    nb = nbformat.read(ROOT / "analysis" / name, as_version=4)
    NotebookClient(nb, kernel_name="mlpmem-test", timeout=120,
                   resources={"metadata": {"path": str(ROOT / "analysis")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was shown"
