"""Issue 15's report: the decoder-only compute frontier and IsoFLOP groups against brute force, α "not
identified", claims withheld with few sizes or zero-width intervals, and the per-run table against its input rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlpmem_lightning.study import analysis as an
from mlpmem_lightning.study.analysis.tables import MODEL
from mlpmem_lightning.study.report import write_report
from mlpmem_lightning.study.report.plots import alpha_label

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "results_small.csv"
SIZES = {"s1": 1e5, "s2": 4e5, "s3": 1.6e6, "s4": 6.4e6}  # non-embedding parameters
BUDGETS = (1e7, 4e7)  # train tokens: every size at two budgets


def row(arch: str, size: str, tokens: float, seed: int, split: str, loss: float, flops: float | None = None,
        **extra) -> dict:
    n = SIZES[size]
    return {"study": "s", "trial": 0, "arch": arch, "decoder_size": size, "memory_size": "", "params_decoder": n,
            "params_memory": 0, "params_total": 3 * n, "params_non_embedding": n, "train_tokens": tokens,
            "flops_train_total": 6 * n * tokens if flops is None else flops, "lambda": 0.0, "split": split,
            "loss": loss, "ppl": math.exp(loss), "seed": seed, **extra}


@pytest.fixture(scope="module")
def ladder() -> pd.DataFrame:
    """Four sizes × two budgets × two seeds of decoder-only with random losses, and kNN-LMs at random FLOPs."""
    rng = np.random.default_rng(7)
    rows = []
    for size in SIZES:
        for tokens in BUDGETS:
            extra = rng.uniform(1.0, 1.6)  # the datastore's share of the kNN-LM's compute (the same for every seed)
            for seed in (0, 1):
                rows.append(row("decoder", size, tokens, seed, "test", 3 + rng.uniform(0, 1)))
                rows.append(row("knn_lm", size, tokens, seed, "test", 3 + rng.uniform(0, 1),
                                flops=6 * SIZES[size] * tokens * extra))
    return pd.DataFrame(rows)


def brute_envelope(df: pd.DataFrame) -> list[tuple[float, float]]:
    """(FLOPs, seed-mean loss) of the decoder cells no other cell beats with no more FLOPs, by plain loops."""
    cells = {}
    for r in df[(df["arch"] == "decoder") & (df["split"] == "test")].to_dict("records"):
        cells.setdefault((r["decoder_size"], r["train_tokens"]), []).append((r["flops_train_total"], r["loss"]))
    means = [(float(np.mean([f for f, _ in v])), float(np.mean([v_ for _, v_ in v]))) for v in cells.values()]
    return sorted((f, loss) for f, loss in means
                  if not any(f2 <= f and l2 < loss for f2, l2 in means if (f2, l2) != (f, loss)))


def test_frontier_is_the_lower_envelope_over_every_size_and_budget(ladder):
    front = an.compute_frontier(ladder)
    expected = brute_envelope(ladder)
    np.testing.assert_allclose(front[["flops_train_total", "loss"]].to_numpy(float), np.array(expected))
    assert len(expected) >= 2  # the random ladder has an envelope worth the name


def test_matched_compute_interpolates_the_frontier_in_log_flops(ladder):
    env = np.array(brute_envelope(ladder))
    got = an.matched_comparison(ladder, {}, "test")
    got = got[got["method"] == "frontier"]
    knn = ladder[ladder["arch"] == "knn_lm"].groupby(["decoder_size", "train_tokens"], as_index=False).agg(
        x=("flops_train_total", "mean"), loss=("loss", "mean"))
    knn = knn[knn["x"] >= env[0, 0]]  # fewer FLOPs than any decoder run: nothing to compare with
    assert len(got) == len(knn)
    for r in knn.itertuples():
        g = got[np.isclose(got["x"], r.x)].iloc[0]
        ref = np.interp(np.log(r.x), np.log(env[:, 0]), env[:, 1])
        assert g["decoder_loss"] == pytest.approx(ref)
        assert g["delta"] == pytest.approx(r.loss - ref)
        assert bool(g["extrapolated"]) == (r.x > env[-1, 0])


def test_isoflop_groups_match_a_numpy_binning(ladder):
    got = an.isoflop_groups(ladder, "test", "params_non_embedding", decades=0.5)
    dec = ladder[ladder["arch"] == "decoder"].groupby(["decoder_size", "train_tokens"], as_index=False).agg(
        flops=("flops_train_total", "mean"), loss=("loss", "mean"), n=("params_non_embedding", "mean"))
    dec["level"] = np.floor(np.log10(dec["flops"]) / 0.5).astype(int)
    wide = dec.groupby("level")["decoder_size"].transform("nunique") >= 2
    expected = sorted(zip(dec[wide]["level"], dec[wide]["decoder_size"], dec[wide]["loss"]))
    have = sorted(zip(got["level"], got["decoder_size"], got["loss"]))
    assert [k[:2] for k in have] == [k[:2] for k in expected] and len(expected) >= 4
    assert [k[2] for k in have] == pytest.approx([k[2] for k in expected])
    assert list(got["level_flops"]) == pytest.approx([10 ** ((k + 0.5) * 0.5) for k in got["level"]])


def test_an_alpha_the_data_cannot_identify_is_flagged():
    """Flat losses: any α fits, so the bootstrap runs into the fit's bounds."""
    x = np.repeat(np.geomspace(1e6, 1e9, 6), 2)
    loss = 3.0 * np.exp(0.01 * np.random.default_rng(0).standard_normal(x.size))
    fit = an.fit_power_law(x, loss, n_starts=3, bootstrap=40)
    lo, hi = fit["alpha_ci"]
    assert lo <= an.ALPHA_BOUNDS[0] * 1.001 or hi >= an.ALPHA_BOUNDS[1] * 0.999
    assert not fit["alpha_identified"]
    assert alpha_label(fit) == "α not identified"


def test_a_three_size_one_seed_interval_is_degenerate_and_allows_no_claim():
    x = np.geomspace(1e6, 1e8, 3)
    fit = an.fit_power_law(x, 2 + 50 * x ** -0.3, n_starts=3, bootstrap=20)
    assert fit["ci_degenerate"] and fit["alpha_ci"][0] == fit["alpha_ci"][1]
    assert not an.claims_allowed(fit, fit)
    wide = {**fit, "n_x": 5, "ci_degenerate": False}
    assert an.claims_allowed(wide, wide) and not an.claims_allowed(wide, {**wide, "n_x": 4})
    assert not an.claims_allowed(wide, {**wide, "ci_degenerate": True})


def test_report_withholds_claims_on_four_sizes_and_names_the_unidentified_alpha(tmp_path, ladder):
    """Four sizes (< 5): no "excludes 0", "steeper" or "shallower"; flat decoder losses: α "not identified"."""
    rows = []
    for r in ladder.to_dict("records"):
        if r["train_tokens"] != BUDGETS[1]:
            continue
        flat = 3.0 + 0.01 * r["seed"]
        power = 2 + 30 * r["params_non_embedding"] ** -0.3 + 0.01 * r["seed"]
        rows.append({**r, "loss": flat if r["arch"] == "decoder" else power})
        rows.append({**rows[-1], "split": "valid"})
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    md = write_report(tmp_path / "r.csv", tmp_path / "out", bootstrap=20).read_text()
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["decoder"]["params_non_embedding"]["alpha_identified"] is False
    assert "not identified" in md
    for claim in ("excludes 0", "steeper", "shallower"):
        assert claim not in md.split("## Methods")[0], claim
    assert "no interval claim" in md or "not compared, an α is not identified" in md


def test_run_table_reports_every_model_from_its_rows():
    df = pd.read_csv(DATA)
    table = an.run_table(df).set_index(MODEL)
    assert len(table) == len(df.drop_duplicates(MODEL))
    for r in df.to_dict("records"):
        got = table.loc[tuple(r[k] if k != "memory_size" or isinstance(r[k], str) else "" for k in MODEL)]
        assert got[f"{r['split']}_ppl"] == pytest.approx(math.exp(r["loss"]))
        for lam in ("0.25", "1.00"):
            want = r.get(f"ppl_lambda_{lam}")
            have = got[f"{r['split']}_ppl_lambda_{lam}"]
            assert (np.isnan(have) and (want is None or np.isnan(want))) or have == pytest.approx(want)
        if r["split"] == "valid":
            assert (np.isnan(got["lambda"]) if r["arch"] == "decoder" else got["lambda"] == r["lambda"])
        assert got["temperature"] == r["temperature"] or np.isnan(r["temperature"])


def test_an_older_table_falls_back_to_total_parameters_and_says_so(tmp_path):
    df = pd.read_csv(DATA)
    old = df.drop(columns=["params_non_embedding", "temperature", "lr", "epochs"])
    old.loc[old["split"] == "test", [c for c in old.columns if c.startswith("ppl_lambda_")]] = np.nan
    old.to_csv(tmp_path / "r.csv", index=False)
    md = write_report(tmp_path / "r.csv", tmp_path / "out", bootstrap=5).read_text()
    out = tmp_path / "out"
    assert not (out / "loss_vs_params.png").exists() and (out / "loss_vs_params_total.png").is_file()
    assert "no `params_non_embedding` (fits and plots use total parameters only)" in md
    assert "This table holds the grid for valid only." in md
    assert set(json.loads((out / "fits.json").read_text())["decoder"]) == {"params_total", "flops_train_total"}


def test_a_decoder_only_table_is_not_said_to_lack_the_knn_temperature():
    """T belongs to kNN-LM and memory rows: a decoder frontier alone lacks nothing; kNN rows without T do."""
    decoders = pd.DataFrame([row("decoder", "s1", 1e7, 0, "test", 5.0, temperature=np.nan)])
    assert "temperature" not in an.missing_optional(decoders)
    knn = pd.concat([decoders, pd.DataFrame([row("knn_lm", "s1", 1e7, 0, "test", 4.9, temperature=np.nan)])])
    assert "temperature" in an.missing_optional(knn)
    assert "temperature" in an.missing_optional(decoders.drop(columns="temperature"))
