"""The kNN-LM's evaluation config in a trial, and the T it chooses on valid.

Shared by the ``knn_lm`` architecture (which scores it) and the targets stage (``targets_temperature: knn_lm``:
the memory's targets at the kNN-LM's T): one run directory and one config, so the targets' choice of T is the
kNN-LM's own validate pass, recorded once (``Stages.run``). Kept apart from both so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from mlpmem_lightning.knn.settings import KNNSettings

MODULE = "KNNLM"  # the LightningModule that scores a kNN-LM


def temperature_grid(spec: Any) -> list[float]:
    """The T grid the kNN-LM chooses from on valid: the spec's ``temperatures``, else 1/8 … 1024."""
    from mlpmem_lightning.lightning.temperature_grid import DEFAULT_TEMPERATURES

    return [float(t) for t in (spec.temperatures or DEFAULT_TEMPERATURES)]


def knn_lm_run(stages: Any) -> tuple[dict, Path, list[float]]:
    """The kNN-LM's model config over the trial's decoder and datastore, its run directory and its T grid."""
    spec, knn = stages.spec, stages.spec.knn_settings
    search = {f.name: getattr(knn, f.name) for f in fields(KNNSettings)}
    grid = temperature_grid(spec)
    model = {"class_path": MODULE, "init_args": {
        "decoder": str(stages.decoder_run), "datastore": str(stages.datastore_dir),
        **search, "index": spec.knn_eval_index or knn.index, "temperatures": grid}}
    return model, stages.out / "knnlm" / f"{stages.tag}-{stages.key(stages.datastore_key, model)}", grid


def grid_point(grid: list[float], logged: float) -> float:
    """The grid's T nearest a logged one (logged in float32: the grid point is the T test runs at and rows record)."""
    return min(grid, key=lambda g: abs(g - logged))


def chosen_temperature(stages: Any) -> float:
    """The T the kNN-LM chooses on valid: its validate pass, run before the targets are built; the kNN-LM's own
    evaluation reuses its recorded metrics (``Stages.run``), so it runs once."""
    model, root, grid = knn_lm_run(stages)
    with stages.exclusive(root):
        return grid_point(grid, stages.run("validate", model, root)["val/temperature"])
