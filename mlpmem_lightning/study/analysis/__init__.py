"""Power-law fits and architecture comparisons over the results table (DESIGN.md, step 7).

What the report and the notebooks (``from mlpmem_lightning.study import analysis as an``) call, in one
namespace: the fits (:mod:`.fits`), the comparisons with the baseline and with the imitated architecture
(:mod:`.comparisons`), and λ (:mod:`.lambdas`). Everything returns numbers and DataFrames; plots and
``report.md`` live in :mod:`mlpmem_lightning.study.report`.
"""

from mlpmem_lightning.study.analysis.comparisons import (
    COMPARISONS,
    compared,
    comparison_axes,
    exponent_differences,
    imitation_gaps,
    matched_comparison,
    own_decoder_gains,
    param_axis,
    seed_means,
)
from mlpmem_lightning.study.analysis.fits import (
    ALPHA_BOUNDS,
    HUBER_DELTA,
    IDENTITY,
    MIN_SIZES_FOR_CLAIMS,
    PARAM_AXES,
    X_AXES,
    FitSet,
    alpha_identified,
    band,
    claims_allowed,
    clean,
    difference_interval,
    fit_all,
    fit_points,
    fit_power_law,
    fits_json,
    fits_table,
    points,
    predict,
    predict_samples,
    start_grid,
)
from mlpmem_lightning.study.analysis.frontier import (
    ISOFLOP_DECADES,
    compute_frontier,
    decoder_cells,
    frontier_loss,
    isoflop_groups,
)
from mlpmem_lightning.study.analysis.lambdas import LAMBDA_PREFIX, best_lambdas, lambda_curves
from mlpmem_lightning.study.analysis.ordering import NOISE_MULTIPLE, pooled_seed_sd, size_means, size_steps
from mlpmem_lightning.study.analysis.tables import FIXED_LAMBDAS, OPTIONAL, lambda_column, missing_optional, run_table

__all__ = ["ALPHA_BOUNDS", "COMPARISONS", "FIXED_LAMBDAS", "HUBER_DELTA", "IDENTITY", "ISOFLOP_DECADES",
           "LAMBDA_PREFIX", "MIN_SIZES_FOR_CLAIMS", "NOISE_MULTIPLE", "OPTIONAL", "PARAM_AXES", "X_AXES", "FitSet",
           "alpha_identified", "band", "best_lambdas", "claims_allowed", "clean", "compared", "comparison_axes",
           "compute_frontier", "decoder_cells", "difference_interval", "exponent_differences", "fit_all", "fit_points",
           "fit_power_law", "fits_json", "fits_table", "frontier_loss", "imitation_gaps", "isoflop_groups",
           "lambda_column", "lambda_curves", "matched_comparison", "missing_optional", "own_decoder_gains",
           "param_axis", "points", "pooled_seed_sd", "predict", "predict_samples", "run_table", "seed_means",
           "size_means", "size_steps", "start_grid"]
