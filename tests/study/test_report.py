"""`report.write_report`: every file, fits.json's structure, honest conclusions, one-line errors.

``tests/fixtures/results_small.csv`` (also the notebooks' default input) is made by
:func:`synthetic_results`; ``python -m tests.test_report`` rewrites it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import architectures
from mlpmem_lightning.study.report import write_report
from mlpmem_lightning.study.results import COLUMNS, write_results

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "results_small.csv"
FILES = ("fits.json", "loss_vs_params.png", "loss_vs_params_total.png", "loss_vs_flops.png", "isoflop.png",
         "lambda_curves.png", "gap_memory_vs_knn.png", "runs.csv", "report.md")
B = 20  # bootstrap resamples in these tests: enough to exercise the intervals, fast on 2 cores

# Ladder rungs as `mlpmem sizes` prints them (vocab 8192, seq_len 256): params_total and training FLOPs
# per token of each decoder, and of its matched memory.
DECODERS = {"200k": (1_262_144, 5_213_568), "800k": (2_950_272, 12_983_040), "3m": (6_687_936, 35_409_024),
            "12m": (17_947_200, 101_784_960), "50m": (60_060_800, 348_568_320)}
MEMORIES = {"200k": (745_920, 4_475_520), "800k": (1_934_208, 11_605_248), "3m": (5_114_304, 30_685_824),
            "12m": (15_528_960, 93_173_760), "50m": (55_019_520, 330_117_120)}
# non-embedding parameters of each decoder and memory (vocab 8192: the embedding is most of a small model)
NON_EMBEDDING = {"200k": (200_000, 120_000), "800k": (800_000, 500_000), "3m": (3_000_000, 2_000_000),
                 "12m": (12_000_000, 9_000_000), "50m": (50_000_000, 40_000_000)}
LAMBDAS = np.round(np.arange(21) * 0.05, 2)
TOKENS, ROWS = 2_000_000, 1_066_554  # decoder/memory training tokens, datastore rows


def _lambda_losses(base: float, gain: float, best: float) -> np.ndarray:
    """A mixed model's loss over the λ grid: the decoder at λ=0, lowest (base − gain) at ``best``."""
    u = LAMBDAS / best
    return base - gain * (2 * u - u**2)


def synthetic_results(seed: int = 0) -> pd.DataFrame:
    """A small study shaped like a sweep's output: 5 decoder sizes x 2 seeds x 3 archs x valid/test.

    Decoder-only loss follows 2.0 + 300·P^−0.35 with 1% multiplicative noise. The kNN-LM gains
    0.12 nats on its own decoder (λ* = 0.25); decoder+memory gains 0.06 on the smallest decoder
    rising by 0.02 per rung (λ* = 0.20), so it crosses the kNN-LM mid-ladder. Gains carry ±0.005 noise.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for trial, (size, (p_dec, fpt)) in enumerate(DECODERS.items()):
        p_mem, mem_fpt = MEMORIES[size]
        ne_dec, ne_mem = NON_EMBEDDING[size]
        f_dec = TOKENS * fpt
        f_knn = f_dec + ROWS * (fpt // 3)
        f_mem = f_knn + 2 * 64 * ROWS * (1024 + 32 * ROWS / 1024) + TOKENS * mem_fpt
        for s in (0, 1):
            test = (2.0 + 300 * p_dec**-0.35) * math.exp(0.01 * rng.standard_normal())
            valid = test * 1.01
            base = {"study": "synthetic", "trial": trial, "decoder_size": size, "params_decoder": p_dec, "seed": s}
            archs = {"decoder": ("", 0, 0, TOKENS, f_dec, 0.0, 0.0),
                     "knn_lm": ("", 0, 0, TOKENS, f_knn, 0.12, 0.25),
                     "mlp_memory": (f"mem-{size}", p_mem, ne_mem, 2 * TOKENS, f_mem, 0.06 + 0.02 * trial, 0.20)}
            for arch, (mem, pm, nem, tokens, flops, gain, lam) in archs.items():
                gain += 0.005 * rng.standard_normal() if gain else 0.0
                common = {**base, "arch": arch, "memory_size": mem, "params_memory": pm, "params_total": p_dec + pm,
                          "train_tokens": tokens, "flops_train_total": int(flops), "lambda": lam,
                          "params_non_embedding": ne_dec + nem, "temperature": np.nan if arch == "decoder" else 1.0,
                          "lr": 1e-3, "epochs": 1}
                for split, loss in (("valid", valid - gain), ("test", test - gain)):
                    at = valid if split == "valid" else test
                    grid = {} if arch == "decoder" else {
                        f"ppl_lambda_{x:.2f}": math.exp(v) for x, v in zip(LAMBDAS, _lambda_losses(at, gain, lam))}
                    rows.append({**common, "split": split, "loss": loss, "ppl": math.exp(loss), **grid})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(DATA, out, bootstrap=B)
    return out


def test_small_results_csv_is_the_generators_output():
    assert list(pd.read_csv(DATA).columns[:len(COLUMNS)]) == list(COLUMNS)
    pd.testing.assert_frame_equal(pd.read_csv(DATA), synthetic_results().pipe(_roundtrip), check_exact=False)


def _roundtrip(df: pd.DataFrame) -> pd.DataFrame:
    import io

    df = df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]
    return pd.read_csv(io.StringIO(df.to_csv(index=False)))


def test_report_writes_every_file(report_dir):
    for name in FILES:
        path = report_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in FILES:
        if name.endswith(".png"):
            assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (report_dir / name).with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"  # paper-ready twin
    assert not list(report_dir.glob("*.tmp"))


def test_fits_json_structure(report_dir):
    fits = json.loads((report_dir / "fits.json").read_text())
    present = set(pd.read_csv(DATA)["arch"])  # the fixture's table has no CE-only control
    assert set(fits) == present and present <= set(architectures.names())
    for arch in present:
        assert set(fits[arch]) == {"params_non_embedding", "params_total", "flops_train_total"}
        for axis, f in fits[arch].items():
            for p in ("E", "A", "alpha"):
                lo, hi = f[f"{p}_ci"]
                assert f[p] > 0 and lo <= hi, (arch, axis, p)
            lo, hi = f["alpha_ci"]
            assert f["alpha_identified"] == (f["alpha_bounds"][0] * 1.001 < lo and hi < f["alpha_bounds"][1] * 0.999)
            assert f["ci_degenerate"] == (not hi > lo)
            assert f["n"] == 10 and f["n_bootstrap"] <= B and f["ci_level"] == 0.95


def test_fits_json_matches_an_independent_least_squares_fit(report_dir):
    """The decoder's α vs params agrees with a plain least-squares fit of the same model (the data are smooth)."""
    from scipy.optimize import curve_fit

    df = pd.read_csv(DATA)
    d = df[(df["arch"] == "decoder") & (df["split"] == "test")]
    (E, A, alpha), _ = curve_fit(lambda x, E, A, a: E + A * x ** (-a), d["params_total"], d["loss"],
                                 p0=(2.0, 300.0, 0.35), maxfev=20000)
    f = json.loads((report_dir / "fits.json").read_text())["decoder"]["params_total"]
    assert f["alpha"] == pytest.approx(alpha, abs=0.1)
    assert f["alpha_ci"][0] - 0.05 <= 0.35 <= f["alpha_ci"][1] + 0.05


def test_report_md_stands_on_its_own(report_dir):
    md = (report_dir / "report.md").read_text()
    for section in ("## What was run", "## Conclusions", "## Perplexity of every run", "## Power-law fits",
                    "## Matched parameters", "## Matched compute", "### Decoder-only compute frontier",
                    "## IsoFLOP view", "## Decoder+memory vs kNN-LM", "## Interpolation weight λ", "## Methods"):
        assert section in md
    for name in FILES:
        if name.endswith(".png"):
            assert f"]({name})" in md
    assert "`synthetic`" in md and "200k" in md and "mem-50m" in md


def test_conclusions_follow_the_numbers(report_dir):
    """Statements checked against the CSV itself, not against the code's own tables."""
    md = (report_dir / "report.md").read_text()
    df = pd.read_csv(DATA)
    test = df[df["split"] == "test"].set_index(["arch", "decoder_size", "seed"])["loss"]
    knn_delta = (test["knn_lm"] - test["decoder"]).groupby("decoder_size").mean()
    lower = int((knn_delta < 0).sum())
    assert f"Measured at equal parameters: kNN-LM is lower than decoder-only in {lower} of 5 pairs" in md
    gap = test["mlp_memory"] - test["knn_lm"]
    assert (f"decoder+memory is below the kNN-LM on the same decoder in {int((gap < 0).sum())} of {len(gap)} runs "
            f"(mean gap {gap.mean():+.3f} nats/token)") in md
    valid = df[(df["split"] == "valid") & (df["arch"] != "decoder")]
    cols = [c for c in df.columns if c.startswith("ppl_lambda_")]
    for arch, label in (("knn_lm", "kNN-LM"), ("mlp_memory", "decoder+memory")):
        means = valid[valid["arch"] == arch].groupby("decoder_size")[cols].mean()
        best = {float(means.loc[size].idxmin()[len("ppl_lambda_"):]) for size in means.index}
        assert len(best) == 1  # one best λ across sizes in this table
        assert f"{label}: best λ on valid (seed-mean curves) is {best.pop():.2f} across 5 sizes." in md
    dec = df[(df["split"] == "test") & (df["arch"] == "decoder")]
    means = dec.groupby("decoder_size")["loss"].mean()[dec.sort_values("params_non_embedding")["decoder_size"].unique()]
    assert f"Decoder-only test loss falls at {int((means.diff().dropna() < 0).sum())} of 4 size steps;" in md


def test_own_decoder_gains_follow_the_csv(report_dir):
    """Each architecture against decoder-only on its own decoder: the perplexity change exp(Δ) - 1 of every pair
    and the conclusion's range, recomputed here from the CSV with NumPy."""
    md = (report_dir / "report.md").read_text()
    df = pd.read_csv(DATA)
    test = df[df["split"] == "test"].set_index(["arch", "decoder_size", "seed"])["loss"]
    parts = []
    for arch, label in (("knn_lm", "kNN-LM"), ("mlp_memory", "decoder+memory")):
        change = np.expm1((test[arch] - test["decoder"]).to_numpy(dtype=np.float64))
        assert len(change) == 10  # 5 sizes x 2 seeds, each on its own decoder
        for value in change:
            assert f"| {value:+.1%} |" in md
        parts.append(f"{label} {change.min():+.1%} to {change.max():+.1%} (10 runs)")
    assert f"On its own decoder, perplexity changes by: {'; '.join(parts)}." in md


def test_thin_architecture_is_skipped_with_a_note(tmp_path):
    df = pd.read_csv(DATA)
    keep = ~((df["arch"] == "mlp_memory") & ~df["decoder_size"].isin(["200k", "800k"]))
    write_results(df[keep].to_dict("records"), tmp_path / "r.csv")
    write_report(tmp_path / "r.csv", tmp_path / "out", bootstrap=5)
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert set(fits) == {"decoder", "knn_lm"}
    assert "decoder+memory vs parameters (total) not fitted: need at least 3 points" in \
        (tmp_path / "out" / "report.md").read_text()


def test_decoder_only_results_get_a_report(tmp_path):
    """What `mlpmem demo` writes today: decoder rows only, three sizes. Every file, and the caveats said."""
    df = pd.read_csv(DATA)
    df = df[(df["arch"] == "decoder") & (df["seed"] == 0) & df["decoder_size"].isin(["200k", "800k", "3m"])]
    df.drop(columns=[c for c in df.columns if c.startswith("ppl_lambda_")]).to_csv(tmp_path / "r.csv", index=False)
    md = write_report(tmp_path / "r.csv", tmp_path / "out", bootstrap=5).read_text()
    assert all((tmp_path / "out" / name).is_file() for name in FILES)
    assert set(json.loads((tmp_path / "out" / "fits.json").read_text())) == {"decoder"}
    assert "Only decoder-only could be fitted" in md and "Fits on fewer than 5 sizes" in md
    assert "falls at 2 of 2 size steps (one seed per size: the seed noise is not measured)" in md
    assert md.count("| not measured |") == 2


def test_two_studies_are_ordered_each_with_its_own_seed_noise(tmp_path):
    """A study with two seeds per size and one with one seed: each gets its own σ (float64 pooled sd, computed
    here) and its own conclusion, never the other's."""
    df = pd.read_csv(DATA)
    dec = df[df["arch"] == "decoder"]
    single = dec[dec["seed"] == 0].assign(study="one-seed")
    pd.concat([dec, single]).to_csv(tmp_path / "r.csv", index=False)
    md = write_report(tmp_path / "r.csv", tmp_path / "out", bootstrap=5).read_text()
    test = dec[dec["split"] == "test"]
    by_size = test.groupby("decoder_size")["loss"]
    dof = int((by_size.size() - 1).sum())
    sigma = math.sqrt(float(((by_size.size() - 1) * by_size.var(ddof=1)).sum()) / dof)
    order = test.sort_values("params_non_embedding")["decoder_size"].unique()
    means = by_size.mean()[order]
    falls = int((means.diff().dropna() < 0).sum())
    assert f"`synthetic`: σ = {sigma:.4f} nats/token ({dof} degrees of freedom)." in md
    assert "`one-seed`: no size has two seeds" in md
    assert "Decoder-only test loss in `one-seed` falls at" in md and "(one seed per size" in md
    assert f"Decoder-only test loss in `synthetic` falls at {falls} of 4 size steps;" in md
    assert f"(σ = {sigma:.4f})" in md
    assert "| study | from | to |" in md


def test_two_studies_name_their_study_in_every_per_run_table(tmp_path):
    """Two studies of the same sizes: the per-run, frontier and IsoFLOP tables get a study column, and each study's
    frontier is its own lower envelope (computed here by brute force over its seed-mean cells); one study gets no
    such column."""
    df = pd.read_csv(DATA)
    dec = df[df["arch"] == "decoder"]
    other = dec.assign(study="other", loss=dec["loss"] + 0.5)
    pd.concat([df, other]).to_csv(tmp_path / "r.csv", index=False)
    md = write_report(tmp_path / "r.csv", tmp_path / "out", bootstrap=5).read_text()
    assert "| study | architecture | decoder |" in md  # the per-run table and "against the frontier"
    assert "| study | decoder | train tokens | FLOPs | loss | seeds |" in md
    assert "| study | architecture | decoder | memory | FLOPs |" in md  # one study's runs against two frontiers
    for study, rows in pd.concat([dec, other]).groupby("study"):
        cells = rows[rows["split"] == "test"].groupby(["decoder_size", "train_tokens"]).agg(
            f=("flops_train_total", "mean"), loss=("loss", "mean")).reset_index()
        on = [r for r in cells.itertuples() if not ((cells["f"] <= r.f) & (cells["loss"] < r.loss)).any()]
        for r in on:
            assert f"| {study} | {r.decoder_size} |" in md and f"| {r.loss:.4f} |" in md
    single = write_report(_write(tmp_path / "one.csv", df), tmp_path / "one", bootstrap=5).read_text()
    assert "| study |" not in single.split("## Decoder-only ordered by size")[0]
    assert "| study | decoder | train tokens |" not in single and "| study | level" not in single


def _write(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_report(tmp_path / "nope.csv", tmp_path / "out")


def test_missing_columns_are_a_user_error(tmp_path):
    pd.read_csv(DATA).drop(columns=["flops_train_total"]).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(UserError, match="lacks required columns flops_train_total"):
        write_report(tmp_path / "r.csv", tmp_path / "out")


def test_fewer_than_three_sizes_still_writes_tables_and_lambda_and_gap_plots(tmp_path, caplog):
    """Issue 16: two sizes cannot be fitted; the report says why (report.md and one log line) and writes the rest."""
    df = pd.read_csv(DATA)
    df[df["decoder_size"].isin(["200k", "800k"])].to_csv(tmp_path / "r.csv", index=False)
    with caplog.at_level("WARNING", logger="mlpmem_lightning.study.report"):
        md = write_report(tmp_path / "r.csv", tmp_path / "out", bootstrap=5).read_text()
    out = tmp_path / "out"
    for name in ("lambda_curves.png", "lambda_curves.pdf", "gap_memory_vs_knn.png", "gap_memory_vs_knn.pdf",
                 "runs.csv", "fits.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "fits.json").read_text()) == {}
    assert "*Not fitted: no architecture can be fitted" in md and "need at least 3 points" in md
    assert "## Perplexity of every run" in md and "## Interpolation weight λ" in md
    assert len(pd.read_csv(out / "runs.csv")) == 2 * 2 * 3  # sizes × seeds × architectures
    warnings = [r for r in caplog.records if "no power-law fits" in r.getMessage()]
    assert len(warnings) == 1


def test_no_rows_on_the_split_is_a_user_error(tmp_path):
    df = pd.read_csv(DATA)
    df[df["split"] == "valid"].to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(UserError, match="no rows with split 'test'"):
        write_report(tmp_path / "r.csv", tmp_path / "out")


if __name__ == "__main__":
    DATA.parent.mkdir(parents=True, exist_ok=True)
    write_results(synthetic_results().to_dict("records"), DATA)
    print(f"wrote {DATA}")


def test_a_figure_saved_twice_has_the_same_pdf_bytes(tmp_path):
    """A committed report changes only with its results: the PDF carries no creation date."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlpmem_lightning.study.report import save_figure

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3, 1, 2])
    save_figure(fig, tmp_path / "a.png")
    time.sleep(1.1)  # the PDF's date has a resolution of one second
    save_figure(fig, tmp_path / "b.png")
    plt.close(fig)
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
