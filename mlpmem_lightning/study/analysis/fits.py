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

Everything here returns numbers and DataFrames; comparisons between architectures are in :mod:`.comparisons`,
plots and ``report.md`` in :mod:`mlpmem_lightning.study.report`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import huber
from threadpoolctl import threadpool_limits

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.study import architectures

# non-embedding parameters first: at a large vocabulary the embeddings are most of a small model, and a ladder's
# span in total parameters understates its span in the parameters that compute (Kaplan et al. 2020)
X_AXES = ("params_non_embedding", "params_total", "flops_train_total")
PARAM_AXES = ("params_non_embedding", "params_total")
# A row's identity: two rows that agree on these describe the same model (a sweep writes the decoder's
# and the kNN-LM's rows again for every memory trained on the same decoder). The token budget is part of it: one
# decoder size trained at two budgets is two models (the compute frontier needs both).
IDENTITY = ("study", "arch", "decoder_size", "memory_size", "train_tokens", "seed", "split")
HUBER_DELTA = 1e-3  # Chinchilla's δ: residuals are log-ratios, so 1e-3 is a 0.1% miss
ALPHA_BOUNDS = (1e-3, 5.0)
MIN_SIZES_FOR_CLAIMS = 5  # fewer sizes: no "excludes 0", "steeper" or "shallower" (issue 15)


class FitSet(dict):
    """``{arch: {x_axis: fit}}`` for every (arch, axis) that could be fitted.

    ``skipped`` maps ``(arch, axis)`` to why it was not (too few sizes), so that a report can
    say so instead of failing on one thin architecture; ``unfitted`` says why nothing was fitted at all
    (a report of fewer than 3 sizes still writes its tables).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped: dict[tuple[str, str], str] = {}
        self.unfitted: str | None = None


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
    """The rows a fit uses: one architecture, one split, finite positive x and loss (none if ``axis`` is absent:
    an older results table)."""
    rows = df[(df["arch"] == arch) & (df["split"] == split)]
    if axis not in df.columns:
        return rows.iloc[:0]
    x, loss = pd.to_numeric(rows[axis], errors="coerce"), rows["loss"].astype(float)
    return rows[np.isfinite(x) & np.isfinite(loss) & (x > 0) & (loss > 0)]


def fit_points(df: pd.DataFrame, arch: str, axis: str, split: str = "test") -> pd.DataFrame:
    """The rows a fit on ``axis`` uses, when a size was trained at several token budgets.

    Against parameters: each model at its largest budget (a size's best-trained run; the smaller budgets
    would pull the curve up by how under-trained they are, not by size). Against FLOPs, for the baseline:
    only the runs on the lower envelope of loss vs FLOPs (the decoder-only compute frontier), so the fitted
    baseline is the best a decoder alone did with that compute. With one budget per size both are all rows.
    """
    pts = points(df, arch, axis, split)
    if pts.empty:
        return pts
    keys = ["study", "decoder_size", "memory_size"]
    tokens = pd.to_numeric(pts["train_tokens"], errors="coerce").fillna(0)
    if axis in PARAM_AXES:
        return pts[tokens == tokens.groupby([pts[k] for k in keys]).transform("max")]
    if axis == "flops_train_total" and arch == architectures.baseline().name:
        cells = pts.assign(_t=tokens).groupby(["study", "decoder_size", "_t"])[[axis, "loss"]].mean()
        keep, best = set(), {}
        for key, r in cells.sort_values([axis, "loss"]).iterrows():
            if r["loss"] < best.get(key[0], np.inf):
                keep.add(key)
                best[key[0]] = r["loss"]
        on = [(s, d, t) in keep for s, d, t in zip(pts["study"], pts["decoder_size"], tokens)]
        return pts[np.array(on, dtype=bool)]
    return pts


# ----------------------------------------------------------------------------------------------
# the fit
# ----------------------------------------------------------------------------------------------

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
    # L-BFGS-B makes thousands of BLAS calls on 3-vectors: with a second BLAS thread spinning on a busy 2-core
    # machine each costs milliseconds instead of microseconds (measured: 0.2 s vs 26 s for 64 fits)
    with threadpool_limits(1, "blas"):
        theta = _minimize(grid, lx, ll, delta, bounds)
        samples = _bootstrap(theta, grid, lx, ll, delta, bounds, bootstrap, seed, bootstrap_starts)
    samples = np.array([_to_original(t, log_x0) for t in samples]).reshape(-1, 3)
    E, A, alpha = _to_original(theta, log_x0)
    q = 100 * np.array([(1 - ci) / 2, (1 + ci) / 2])
    cis = np.percentile(samples, q, axis=0).T if len(samples) else np.full((3, 2), np.nan)
    alpha_ci = tuple(map(float, cis[2]))
    return {"E": E, "A": A, "alpha": alpha, "E_ci": tuple(map(float, cis[0])), "A_ci": tuple(map(float, cis[1])),
            "alpha_ci": alpha_ci, "alpha_identified": alpha_identified(alpha_ci),
            "ci_degenerate": not bool(np.isfinite(alpha_ci).all() and alpha_ci[1] > alpha_ci[0]),
            "n": int(len(x)), "n_x": int(len(np.unique(x))),
            "n_bootstrap": int(len(samples)),
            "ci_level": ci, "x_min": float(x.min()), "x_max": float(x.max()), "x_ref": float(np.exp(log_x0)),
            "samples": samples}


def alpha_identified(alpha_ci: tuple[float, float], bounds: tuple[float, float] = ALPHA_BOUNDS,
                     rtol: float = 1e-3) -> bool:
    """False when the interval reaches either bound of α (or is missing): the data do not pin α down, the
    optimiser's box does, and the number printed would be the box's, not the data's."""
    lo, hi = alpha_ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return False
    return lo > bounds[0] * (1 + rtol) and hi < bounds[1] * (1 - rtol)


def claims_allowed(*fits: dict) -> bool:
    """Whether "excludes 0", "steeper" or "shallower" may be said of these fits: each on at least
    ``MIN_SIZES_FOR_CLAIMS`` sizes, with a bootstrap interval of α that has width and does not reach α's bounds.
    With 3 sizes and one seed every usable resample is the data set itself, and a zero-width interval "excludes 0"
    by construction; a curve whose α the optimiser's box sets is not one to read differences off."""
    return bool(fits) and all(f["n_x"] >= MIN_SIZES_FOR_CLAIMS and not f["ci_degenerate"] and f["alpha_identified"]
                              for f in fits)


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
    archs = architectures.ranked(df["arch"])
    for i, arch in enumerate(archs):
        for j, axis in enumerate(X_AXES):
            pts = fit_points(df, arch, axis, split)
            if pts.empty:
                continue
            try:
                fit = fit_power_law(pts[axis], pts["loss"], n_starts=n_starts, bootstrap=bootstrap,
                                    seed=[seed, i, j], ci=ci)
            except UserError as err:
                frontier = axis == "flops_train_total" and arch == architectures.baseline().name
                fits.skipped[(arch, axis)] = str(err) + (" on the compute frontier" if frontier else "")
                continue
            fits.setdefault(arch, {})[axis] = fit
    if not fits:
        counts = {a: points(df, a, "params_total", split)["params_total"].nunique() for a in archs}
        raise UserError(f"no architecture can be fitted on split {split!r}: need at least 3 points at distinct "
                        f"sizes per architecture, got {', '.join(f'{a}: {n}' for a, n in counts.items())}")
    return fits


def fits_table(fits: dict) -> pd.DataFrame:
    """One row per (arch, axis): estimates and interval ends, for tables and notebooks."""
    rows = []
    for arch, by_axis in fits.items():
        for axis, f in by_axis.items():
            row = {"arch": arch, "x_axis": axis, "n": f["n"], "n_x": f["n_x"], "n_bootstrap": f["n_bootstrap"],
                   "alpha_identified": f["alpha_identified"], "ci_degenerate": f["ci_degenerate"]}
            for p in ("E", "A", "alpha"):
                row.update({p: f[p], f"{p}_lo": f[f"{p}_ci"][0], f"{p}_hi": f[f"{p}_ci"][1]})
            rows.append(row)
    return pd.DataFrame(rows)


def fits_json(fits: dict, split: str = "test") -> dict:
    """The ``fits.json`` structure: ``{arch: {x_axis: {E, E_ci, A, A_ci, alpha, alpha_ci, …}}}``."""
    keys = ("E", "E_ci", "A", "A_ci", "alpha", "alpha_ci", "alpha_identified", "ci_degenerate", "n", "n_x",
            "n_bootstrap", "ci_level", "x_min", "x_max")
    out = {}
    for arch, by_axis in fits.items():
        out[arch] = {}
        for axis, f in by_axis.items():
            entry = {k: list(f[k]) if k.endswith("_ci") else f[k] for k in keys}
            entry["alpha_bounds"] = list(ALPHA_BOUNDS)
            out[arch][axis] = {"model": "L(x) = E + A * x^(-alpha)", "loss": f"{split} loss (nats/token)", **entry}
    return out
