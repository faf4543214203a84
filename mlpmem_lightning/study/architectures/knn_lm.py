"""kNN-LM (Khandelwal et al. 2020): the trial's decoder mixed with a search over its train-split datastore.

Nothing is trained beyond the decoder; the datastore pass counts towards its training compute (the search
happens at inference). Neighbours are found with the spec's ``knn:`` settings, the same ones that built the
memory's targets; ``knn_eval_index`` may pick another index for evaluation. The temperature is chosen with λ on
valid from the spec's ``temperatures`` grid (default 1/8 … 1024, a factor 2 apart) in one pass; test runs at the
chosen (T, λ), and both rows record T.
"""

from __future__ import annotations

from pathlib import Path

from mlpmem_lightning.study.architectures.base import Architecture, Score
from mlpmem_lightning.study.knn_eval import MODULE, grid_point, knn_lm_run
from mlpmem_lightning.study.stages import Stages


class KNNLanguageModel(Architecture):
    def evaluate(self, stages: Stages) -> dict[str, Score]:
        model, root, grid = knn_lm_run(stages)
        with stages.exclusive(root), stages.timed("knn_lm_eval"):  # trials of one decoder take turns
            return temperature_grid_scores(stages, model, root, grid)


def temperature_grid_scores(stages: Stages, model: dict, root: Path, grid: list[float]) -> dict[str, Score]:
    """Validate over the (T, λ) grid in one pass, choose both there (λ unless the spec fixes it), test at them."""
    valid = stages.run("validate", model, root)
    t = grid_point(grid, valid["val/temperature"])
    lam = stages.spec.lambda_ if stages.spec.lambda_ is not None else round(valid["val/best_lambda"], 6)
    at = {**model, "init_args": {**model["init_args"], "temperatures": [t], "lambda_": lam}}
    test = stages.run("test", at, root)
    curves = {k.split("/", 1)[1]: v for k, v in valid.items()
              if k.startswith(("val/ppl_lambda_", "val/ppl_T_", "val/lambda_T_"))}
    return {"valid": Score(valid["val/loss"], valid["val/lambda"], curves, t),
            # the test pass's λ grid (at the chosen T): the report's λ = 0.25 and λ = 1 columns, never to choose
            "test": Score(test["test/loss"], test["test/lambda"],
                          {k.split("/", 1)[1]: v for k, v in test.items() if k.startswith("test/ppl_lambda_")}, t)}


KNN_LM = KNNLanguageModel(name="knn_lm", label="kNN-LM", colour="tab:orange", marker="s", module=MODULE,
                          needs=("datastore",), weighs="kNN distribution", short="knn")
