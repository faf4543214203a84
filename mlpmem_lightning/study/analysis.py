"""Power-law fits and architecture comparisons over the results table (DESIGN.md, step 7).

Loss is fitted as L(x) = E + A·x^(−α) the way Hoffmann et al. 2022 (Chinchilla, approach 3) do:
a Huber loss on log-residuals log L − log(E + A·x^(−α)), minimised with L-BFGS-B from a grid of
starting points, the best optimum kept. Log-residuals make a 2% miss at a large model count as much
as a 2% miss at a small one; the Huber loss keeps one bad run (a diverged trial) from dragging the
curve. E = exp(e) and A = exp(a) keep both positive (e has a floor, E ≥ e^−12·max L, which reads
as E ≈ 0 and stops the optimiser from chasing e → −∞), and x is divided by its geometric mean
inside the fit so that a and α are not tied together by a huge log x (in the original units
A = A'·x0^α is reported). Intervals are percentile bootstraps over points: rows are
resampled with replacement and refitted, so several seeds at one size widen or narrow the interval
as their spread says.

Everything here returns numbers and DataFrames; plots and ``report.md`` live in :mod:`.report`.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import huber

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study.results import ARCHS

X_AXES = ("params_total", "flops_train_total")
# A row's identity: two rows that agree on these describe the same model (a sweep writes the decoder's
# and the kNN-LM's rows again for every memory trained on the same decoder).
IDENTITY = ("study", "arch", "decoder_size", "memory_size", "seed", "split")
HUBER_DELTA = 1e-3  # Chinchilla's δ: residuals are log-ratios, so 1e-3 is a 0.1% miss
ALPHA_BOUNDS = (1e-3, 5.0)


class FitSet(dict):
    """``{arch: {x_axis: fit}}`` for every (arch, axis) that could be fitted.

    ``skipped`` maps ``(arch, axis)`` to why it was not (too few sizes), so that a report can
    say so instead of failing on one thin architecture.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped: dict[tuple[str, str], str] = {}


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------

def clean(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: blank memory sizes made "", repeated rows of the same model dropped.

    Without the de-duplication a decoder shared by three memories would count three times in
    its fit and pull the curve towards itself.
    """
    df = df.copy()
    for col in ("study", "decoder_size", "memory_size"):
        df[col] = df[col].fillna("").astype(str)
    return df.drop_duplicates(subset=list(IDENTITY), keep="first").reset_index(drop=True)


def points(df: pd.DataFrame, arch: str, axis: str, split: str = "test") -> pd.DataFrame:
    """The rows a fit uses: one architecture, one split, finite positive x and loss."""
    rows = df[(df["arch"] == arch) & (df["split"] == split)]
    x, loss = rows[axis].astype(float), rows["loss"].astype(float)
    return rows[np.isfinite(x) & np.isfinite(loss) & (x > 0) & (loss > 0)]


# ----------------------------------------------------------------------------------------------
# the fit
# ----------------------------------------------------------------------------------------------

@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run scipy's bundled OpenBLAS on one thread for the duration.

    L-BFGS-B makes thousands of BLAS calls on 3-vectors; with a second OpenBLAS thread spinning on a
    busy 2-core machine each call costs milliseconds instead of microseconds (measured: 0.2 s vs 26 s
    for 64 fits). threadpoolctl would do this, but it is not a dependency; where scipy does not bundle
    OpenBLAS (MKL, a system BLAS) this is a no-op.
    """
    libs = []
    for lib in _bundled_openblas():
        libs.append((lib, lib.scipy_openblas_get_num_threads()))
        lib.scipy_openblas_set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in libs:
            lib.scipy_openblas_set_num_threads(n)


def _bundled_openblas() -> list[ctypes.CDLL]:
    """The OpenBLAS that scipy's wheels ship in ``site-packages/scipy.libs`` (already loaded by scipy)."""
    import scipy

    site = os.path.dirname(os.path.dirname(scipy.__file__))
    libs = []
    for path in glob.glob(os.path.join(site, "scipy.libs", "libscipy_openblas*.so")):
        try:
            lib = ctypes.CDLL(path)
            lib.scipy_openblas_get_num_threads, lib.scipy_openblas_set_num_threads  # noqa: B018
        except (OSError, AttributeError):
            continue
        libs.append(lib)
    return libs


def _objective(theta: np.ndarray, lx: np.ndarray, ll: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of log-residuals (divided by δ so L-BFGS-B's tolerances see O(1) values) and its gradient."""
    e, a, alpha = theta
    t = a - alpha * lx
    lp = np.logaddexp(e, t)
    r = ll - lp
    psi = np.clip(r, -delta, delta)
    we, wt = np.exp(e - lp), np.exp(t - lp)  # d lp / de, d lp / da
    grad = np.array([-(psi * we).sum(), -(psi * wt).sum(), (psi * wt * lx).sum()])
    return float(huber(delta, r).sum()) / delta, grad / delta


def _grid_values(grid: np.ndarray, lx: np.ndarray, ll: np.ndarray, delta: float) -> np.ndarray:
    """The objective at every grid point at once (to rank starting points cheaply)."""
    e, a, alpha = grid[:, :1], grid[:, 1:2], grid[:, 2:]
    r = ll[None, :] - np.logaddexp(e, a - alpha * lx[None, :])
    return huber(delta, r).sum(axis=1)


def start_grid(loss: np.ndarray, n_starts: int) -> np.ndarray:
    """``n_starts``³ starting points (e, a', α), spread over what the losses make plausible.

    E runs from near 0 to near the smallest loss, α over the range scaling studies report
    (0.05 … 1.5), and A' (the reducible loss at the geometric-mean x) around median(L) − E.
    """
    fracs = np.linspace(0.05, 0.95, n_starts)
    alphas = np.geomspace(0.05, 1.5, n_starts)
    offsets = np.linspace(-2.0, 2.0, n_starts) if n_starts > 1 else np.zeros(1)
    lo, mid = loss.min(), np.median(loss)
    rows = []
    for f in fracs:
        e = np.log(f * lo)
        for alpha in alphas:
            for off in offsets:
                rows.append((e, np.log(max(mid - f * lo, 1e-3 * mid)) + off, alpha))
    return np.array(rows)


def _bounds(loss: np.ndarray) -> list[tuple[float, float]]:
    """E between ~0 (e^−12 of the largest loss) and the largest loss, A' within a wide range, α positive.

    A finite floor for e matters: when the data want E = 0, an unbounded e drifts towards −∞ for
    hundreds of iterations without changing the fit.
    """
    top = float(np.log(loss.max()))
    return [(top - 12.0, top), (top - 30.0, top + 10.0), ALPHA_BOUNDS]


def _minimize(starts: np.ndarray, lx: np.ndarray, ll: np.ndarray, delta: float,
              bounds: list[tuple[float, float]]) -> np.ndarray:
    """L-BFGS-B from every start; the parameters of the lowest optimum."""
    best, best_f = starts[0], np.inf
    for x0 in starts:
        res = minimize(_objective, x0, args=(lx, ll, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000})
        if res.fun < best_f:
            best, best_f = res.x, res.fun
    return best


def _to_original(theta: np.ndarray, log_x0: float) -> tuple[float, float, float]:
    """(e, a', α) in centred log x -> (E, A, α) of L = E + A·x^(−α) in the original units."""
    e, a, alpha = theta
    return float(np.exp(e)), float(np.exp(a + alpha * log_x0)), float(alpha)


def _check_points(x: np.ndarray, loss: np.ndarray) -> None:
    if x.shape != loss.shape or x.ndim != 1:
        raise UserError(f"x and loss must be 1-D and of one length, got shapes {x.shape} and {loss.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(loss)) and np.all(x > 0) and np.all(loss > 0)):
        raise UserError("x and loss must be finite and positive to fit L = E + A·x^(−α)")
    if len(np.unique(x)) < 3:
        raise UserError(f"need at least 3 points at distinct x to fit E, A and α, got {len(np.unique(x))}")


def fit_power_law(x, loss, n_starts: int = 4, bootstrap: int = 1000, seed: int | list[int] = 0, ci: float = 0.95,
                  delta: float = HUBER_DELTA, bootstrap_starts: int = 1) -> dict:
    """Fit L(x) = E + A·x^(−α) (E ≥ 0, A > 0, α > 0) with a percentile-bootstrap interval per parameter.

    ``n_starts`` is the number of grid values per parameter (``n_starts``³ L-BFGS-B starts for the
    fit itself). A bootstrap refit starts from the full-data optimum and from the ``bootstrap_starts``
    grid points that are best on the resample, which finds the same optima as the full grid at a
    fraction of its cost. Resamples with fewer than 3 distinct x cannot determine three parameters
    and are skipped (``n_bootstrap`` says how many were used).

    With few distinct x the percentile interval understates the uncertainty: with exactly 3 sizes
    and one run each every usable resample is the data set itself, and the interval collapses.

    Returns ``E, A, alpha, E_ci, A_ci, alpha_ci, n`` plus ``n_x`` (distinct x), ``n_bootstrap``, ``ci_level``,
    ``x_min``/``x_max`` (the fitted range), ``x_ref`` (the centring constant) and ``samples``
    (the bootstrap fits as an array of rows (E, A, α), used for bands and differences).
    """
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    _check_points(x, loss)
    log_x0 = float(np.log(x).mean())
    lx, ll = np.log(x) - log_x0, np.log(loss)
    grid, bounds = start_grid(loss, n_starts), _bounds(loss)
    with single_threaded_blas():
        theta = _minimize(grid, lx, ll, delta, bounds)
        samples = _bootstrap(theta, grid, lx, ll, delta, bounds, bootstrap, seed, bootstrap_starts)
    samples = np.array([_to_original(t, log_x0) for t in samples]).reshape(-1, 3)
    E, A, alpha = _to_original(theta, log_x0)
    q = 100 * np.array([(1 - ci) / 2, (1 + ci) / 2])
    cis = np.percentile(samples, q, axis=0).T if len(samples) else np.full((3, 2), np.nan)
    return {"E": E, "A": A, "alpha": alpha, "E_ci": tuple(map(float, cis[0])), "A_ci": tuple(map(float, cis[1])),
            "alpha_ci": tuple(map(float, cis[2])), "n": int(len(x)), "n_x": int(len(np.unique(x))),
            "n_bootstrap": int(len(samples)),
            "ci_level": ci, "x_min": float(x.min()), "x_max": float(x.max()), "x_ref": float(np.exp(log_x0)),
            "samples": samples}


def _bootstrap(theta: np.ndarray, grid: np.ndarray, lx: np.ndarray, ll: np.ndarray, delta: float,
               bounds: list[tuple[float, float]], n: int, seed, n_grid: int) -> list[np.ndarray]:
    """Refit on ``n`` resamples of the points (rows drawn with replacement)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        idx = rng.integers(0, len(lx), len(lx))
        if len(np.unique(lx[idx])) < 3:
            continue
        ranked = grid[np.argsort(_grid_values(grid, lx[idx], ll[idx], delta))[:n_grid]]
        out.append(_minimize(np.vstack([theta, ranked]), lx[idx], ll[idx], delta, bounds))
    return out


def predict(fit: dict, x) -> np.ndarray:
    """L(x) = E + A·x^(−α) of a fit."""
    x = np.asarray(x, dtype=float)
    return fit["E"] + fit["A"] * x ** (-fit["alpha"])


def predict_samples(fit: dict, x) -> np.ndarray:
    """L(x) under every bootstrap fit: shape [n_bootstrap, len(x)]."""
    s, x = fit["samples"], np.atleast_1d(np.asarray(x, dtype=float))
    return s[:, :1] + s[:, 1:2] * x[None, :] ** (-s[:, 2:])


def band(fit: dict, x, ci: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of L(x) over the bootstrap fits (the shaded area of the plots)."""
    ci = fit["ci_level"] if ci is None else ci
    lo, hi = np.percentile(predict_samples(fit, x), [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return lo, hi


def difference_interval(a: np.ndarray, b: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a − b from two independent bootstrap sample sets (paired by index)."""
    m = min(len(a), len(b))
    if m == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(np.asarray(a)[:m] - np.asarray(b)[:m], [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def fit_all(df: pd.DataFrame, split: str = "test", *, bootstrap: int = 1000, seed: int = 0, n_starts: int = 4,
            ci: float = 0.95) -> FitSet:
    """Fit every architecture against each x-axis on one split; several seeds at one size are separate points.

    An (arch, axis) with fewer than 3 distinct x is left out and recorded in ``.skipped``; if
    nothing at all can be fitted that is a :class:`UserError`.
    """
    df = clean(df)
    fits = FitSet()
    for i, arch in enumerate(ARCHS):
        for j, axis in enumerate(X_AXES):
            pts = points(df, arch, axis, split)
            if pts.empty:
                continue
            try:
                fit = fit_power_law(pts[axis], pts["loss"], n_starts=n_starts, bootstrap=bootstrap,
                                    seed=[seed, i, j], ci=ci)
            except UserError as err:
                fits.skipped[(arch, axis)] = str(err)
                continue
            fits.setdefault(arch, {})[axis] = fit
    if not fits:
        counts = {a: points(df, a, "params_total", split)["params_total"].nunique() for a in ARCHS}
        raise UserError(f"no architecture can be fitted on split {split!r}: need at least 3 points at distinct "
                        f"sizes per architecture, got {', '.join(f'{a}: {n}' for a, n in counts.items())}")
    return fits


def fits_table(fits: dict) -> pd.DataFrame:
    """One row per (arch, axis): estimates and interval ends, for tables and notebooks."""
    rows = []
    for arch, by_axis in fits.items():
        for axis, f in by_axis.items():
            row = {"arch": arch, "x_axis": axis, "n": f["n"], "n_x": f["n_x"], "n_bootstrap": f["n_bootstrap"]}
            for p in ("E", "A", "alpha"):
                row.update({p: f[p], f"{p}_lo": f[f"{p}_ci"][0], f"{p}_hi": f[f"{p}_ci"][1]})
            rows.append(row)
    return pd.DataFrame(rows)


def fits_json(fits: dict, split: str = "test") -> dict:
    """The ``fits.json`` structure: ``{arch: {x_axis: {E, E_ci, A, A_ci, alpha, alpha_ci, …}}}``."""
    keys = ("E", "E_ci", "A", "A_ci", "alpha", "alpha_ci", "n", "n_x", "n_bootstrap", "ci_level", "x_min", "x_max")
    out = {}
    for arch, by_axis in fits.items():
        out[arch] = {}
        for axis, f in by_axis.items():
            entry = {k: list(f[k]) if k.endswith("_ci") else f[k] for k in keys}
            out[arch][axis] = {"model": "L(x) = E + A * x^(-alpha)", "loss": f"{split} loss (nats/token)", **entry}
    return out


# ----------------------------------------------------------------------------------------------
# comparisons
# ----------------------------------------------------------------------------------------------

COMPARISONS = {"parameters": "params_total", "compute": "flops_train_total"}


def matched_comparison(df: pd.DataFrame, fits: dict, split: str = "test", param_rtol: float = 0.01) -> pd.DataFrame:
    """Each architecture against decoder-only at matched parameters and at matched compute.

    ``method == "fit"``: for every x observed on that axis (any architecture), the fitted loss of the
    architecture and of decoder-only at that same x, their difference ``delta`` (negative: the
    architecture is better) and its bootstrap interval; ``extrapolated`` marks x outside either fit's
    observed range.

    ``method == "direct"``: measured losses, averaged over seeds per (study, arch, decoder_size,
    memory_size, x). At matched parameters an architecture point is paired with the decoder-only point
    of the same study whose params_total is equal within ``param_rtol`` (a kNN-LM and its own decoder,
    or a decoder+memory and a decoder-only model that happens to be as large); points without one are
    left out. At matched compute it is paired with the decoder-only point of the same study nearest in
    log flops_train_total; ``x_ratio`` (arch x / decoder x) says how close the match is.
    """
    df = clean(df)
    rows = []
    for comparison, axis in COMPARISONS.items():
        rows += _fitted_rows(df, fits, split, comparison, axis)
        rows += _direct_rows(df, split, comparison, axis, param_rtol)
    cols = ["comparison", "method", "arch", "study", "decoder_size", "memory_size", "x", "loss", "decoder_x",
            "decoder_loss", "delta", "delta_lo", "delta_hi", "x_ratio", "n_seeds", "extrapolated"]
    return pd.DataFrame(rows, columns=cols)


def _fitted_rows(df: pd.DataFrame, fits: dict, split: str, comparison: str, axis: str) -> list[dict]:
    dec = fits.get("decoder", {}).get(axis)
    xs = np.unique(np.concatenate([points(df, a, axis, split)[axis].to_numpy(float) for a in ARCHS]))
    rows = []
    for arch in ARCHS[1:]:
        fit = fits.get(arch, {}).get(axis)
        if fit is None:
            continue
        for x in xs:
            loss = float(predict(fit, x))
            row = {"comparison": comparison, "method": "fit", "arch": arch, "x": float(x), "loss": loss,
                   "decoder_x": float(x), "x_ratio": 1.0, "extrapolated": not _inside(fit, x)}
            if dec is not None:
                d = float(predict(dec, x))
                lo, hi = difference_interval(predict_samples(fit, x)[:, 0], predict_samples(dec, x)[:, 0],
                                             fit["ci_level"])
                row.update(decoder_loss=d, delta=loss - d, delta_lo=lo, delta_hi=hi,
                           extrapolated=row["extrapolated"] or not _inside(dec, x))
            rows.append(row)
    return rows


def _inside(fit: dict, x: float) -> bool:
    return fit["x_min"] * (1 - 1e-9) <= x <= fit["x_max"] * (1 + 1e-9)


def seed_means(df: pd.DataFrame, split: str, axis: str) -> pd.DataFrame:
    """Mean loss over seeds per (study, arch, decoder_size, memory_size, x), with the seed count."""
    frames = [points(df, a, axis, split) for a in ARCHS]
    rows = pd.concat(frames) if frames else df.iloc[:0]
    keys = ["study", "arch", "decoder_size", "memory_size", axis]
    return rows.groupby(keys, as_index=False).agg(loss=("loss", "mean"), n_seeds=("seed", "nunique"))


def _direct_rows(df: pd.DataFrame, split: str, comparison: str, axis: str, param_rtol: float) -> list[dict]:
    means = seed_means(df, split, axis)
    rows = []
    for _, p in means[means["arch"] != "decoder"].iterrows():
        dec = means[(means["arch"] == "decoder") & (means["study"] == p["study"])]
        if dec.empty:
            continue
        dist = np.abs(np.log(dec[axis].to_numpy(float) / float(p[axis])))
        k = int(np.argmin(dist))
        if comparison == "parameters" and dist[k] > np.log1p(param_rtol):
            continue
        d = dec.iloc[k]
        rows.append({"comparison": comparison, "method": "direct", "arch": p["arch"], "study": p["study"],
                     "decoder_size": p["decoder_size"], "memory_size": p["memory_size"], "x": float(p[axis]),
                     "loss": float(p["loss"]), "decoder_x": float(d[axis]), "decoder_loss": float(d["loss"]),
                     "delta": float(p["loss"] - d["loss"]), "x_ratio": float(p[axis]) / float(d[axis]),
                     "n_seeds": int(p["n_seeds"]), "extrapolated": False})
    return rows


def exponent_differences(fits: dict, ci: float = 0.95) -> pd.DataFrame:
    """α of each architecture minus decoder-only's α, per axis, with a bootstrap interval.

    The paper's claim is a *steeper* power law for decoder+memory; that is only supported where
    this interval lies above zero.
    """
    rows = []
    for arch in ARCHS[1:]:
        for axis in X_AXES:
            fit, dec = fits.get(arch, {}).get(axis), fits.get("decoder", {}).get(axis)
            if fit is None or dec is None:
                continue
            lo, hi = difference_interval(fit["samples"][:, 2], dec["samples"][:, 2], ci)
            rows.append({"arch": arch, "x_axis": axis, "alpha": fit["alpha"], "decoder_alpha": dec["alpha"],
                         "diff": fit["alpha"] - dec["alpha"], "diff_lo": lo, "diff_hi": hi})
    return pd.DataFrame(rows, columns=["arch", "x_axis", "alpha", "decoder_alpha", "diff", "diff_lo", "diff_hi"])


def memory_vs_knn(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Decoder+memory minus kNN-LM loss for memories and datastores built on the same decoder.

    Pairs share study, decoder_size and seed: the memory imitates exactly that kNN-LM, so the gap
    is how much of the retriever the memory has learned (negative: the memory is better).
    """
    df = clean(df)
    mem = points(df, "mlp_memory", "params_total", split)
    knn = points(df, "knn_lm", "params_total", split)
    on = ["study", "decoder_size", "seed"]
    pairs = mem.merge(knn[on + ["loss"]], on=on, suffixes=("_memory", "_knn"))
    pairs["gap"] = pairs["loss_memory"] - pairs["loss_knn"]
    cols = ["study", "decoder_size", "memory_size", "seed", "params_total", "loss_memory", "loss_knn", "gap"]
    return pairs[cols].sort_values(["params_total", "seed"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# λ
# ----------------------------------------------------------------------------------------------

LAMBDA_PREFIX = "ppl_lambda_"


def lambda_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Valid perplexity per λ in long format (study, arch, decoder_size, memory_size, seed, params_total, lambda, ppl).

    Read from the ``ppl_lambda_*`` columns of valid rows; missing columns or NaN cells give no rows.
    ``params_total`` is carried along so that curves can be ordered by size.
    """
    cols = [c for c in df.columns if c.startswith(LAMBDA_PREFIX)]
    keys = ["study", "arch", "decoder_size", "memory_size", "seed", "params_total"]
    out_cols = keys + ["lambda", "ppl"]
    if not cols:
        return pd.DataFrame(columns=out_cols)
    valid = clean(df)
    valid = valid[(valid["split"] == "valid") & (valid["arch"] != "decoder")]
    long = valid[keys + cols].melt(id_vars=keys, value_vars=cols, var_name="lambda", value_name="ppl")
    long["lambda"] = long["lambda"].str[len(LAMBDA_PREFIX):].astype(float)
    long["ppl"] = pd.to_numeric(long["ppl"], errors="coerce")
    long = long[np.isfinite(long["ppl"])]
    return long[out_cols].sort_values(keys + ["lambda"]).reset_index(drop=True)


def best_lambdas(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, decoder_size, memory_size): the λ minimising seed-mean valid perplexity.

    Also the λ the table records as chosen on valid (``chosen_lambda``, mean over seeds) and the
    perplexity at λ = 0 (the decoder alone), so the gain from mixing can be read off. Without
    ``ppl_lambda_*`` columns only ``chosen_lambda`` is filled.
    """
    keys = ["arch", "decoder_size", "memory_size"]
    table = clean(df)
    table = table[(table["split"] == "valid") & (table["arch"] != "decoder")]
    chosen = table.groupby(keys, as_index=False).agg(chosen_lambda=("lambda", "mean"), n_seeds=("seed", "nunique"))
    curves = lambda_curves(df)
    if curves.empty:
        return _by_size(chosen.assign(best_lambda=np.nan, best_ppl=np.nan, ppl_lambda_0=np.nan), table)
    mean = curves.groupby(keys + ["lambda"], as_index=False)["ppl"].mean()
    best = mean.loc[mean.groupby(keys)["ppl"].idxmin()].rename(columns={"lambda": "best_lambda", "ppl": "best_ppl"})
    zero = mean[mean["lambda"] == 0].rename(columns={"ppl": "ppl_lambda_0"}).drop(columns="lambda")
    return _by_size(chosen.merge(best, on=keys, how="left").merge(zero, on=keys, how="left"), table)


def _by_size(frame: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Rows in architecture order, then from the smallest model to the largest."""
    keys = ["arch", "decoder_size", "memory_size"]
    size = table.groupby(keys, as_index=False)["params_total"].mean()
    frame = frame.merge(size, on=keys, how="left")
    frame = frame.assign(order=frame["arch"].map(ARCHS.index)).sort_values(["order", "params_total"])
    return frame.drop(columns="order").reset_index(drop=True)
