"""Power-law fits and architecture comparisons over the results table (DESIGN.md, step 7).

What the report and the notebooks (``from mlpmem_lightning.study import analysis as an``) call, in one
namespace: the fits (:mod:`.fits`), the comparisons with the baseline and with the imitated architecture
(:mod:`.comparisons`), and λ (:mod:`.lambdas`). Everything returns numbers and DataFrames; plots and
``report.md`` live in :mod:`mlpmem_lightning.study.report`.
"""

from mlpmem_lightning.study.analysis.comparisons import (
    COMPARISONS,
    compared,
    exponent_differences,
    imitation_gaps,
    matched_comparison,
    seed_means,
)
from mlpmem_lightning.study.analysis.fits import (
    HUBER_DELTA,
    IDENTITY,
    X_AXES,
    FitSet,
    band,
    clean,
    difference_interval,
    fit_all,
    fit_power_law,
    fits_json,
    fits_table,
    points,
    predict,
    predict_samples,
    start_grid,
)
from mlpmem_lightning.study.analysis.lambdas import LAMBDA_PREFIX, best_lambdas, lambda_curves

__all__ = ["COMPARISONS", "HUBER_DELTA", "IDENTITY", "LAMBDA_PREFIX", "X_AXES", "FitSet", "band", "best_lambdas",
           "clean", "compared", "difference_interval", "exponent_differences", "fit_all", "fit_power_law",
           "fits_json", "fits_table", "imitation_gaps", "lambda_curves", "matched_comparison", "points", "predict",
           "predict_samples", "seed_means", "start_grid"]
