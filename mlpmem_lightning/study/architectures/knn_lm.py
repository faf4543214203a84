"""kNN-LM (Khandelwal et al. 2020): the trial's decoder mixed with a search over its train-split datastore.

Nothing is trained beyond the decoder; the datastore pass counts towards its training compute (the search
happens at inference). Neighbours are found and weighted with the spec's ``knn:`` settings, the same ones
that built the memory's targets; ``knn_eval_index`` may pick another index for evaluation.
"""

from __future__ import annotations

from dataclasses import fields

from mlpmem_lightning.knn.settings import KNNSettings
from mlpmem_lightning.study.architectures.base import Architecture, Score, lambda_grid_scores
from mlpmem_lightning.study.stages import Stages


class KNNLanguageModel(Architecture):
    def evaluate(self, stages: Stages) -> dict[str, Score]:
        spec, knn = stages.spec, stages.spec.knn_settings
        search = {f.name: getattr(knn, f.name) for f in fields(KNNSettings)}
        model = {"class_path": self.module, "init_args": {
            "decoder": str(stages.decoder_run), "datastore": str(stages.datastore_dir),
            **search, "index": spec.knn_eval_index or knn.index}}
        root = stages.out / "knnlm" / f"{stages.tag}-{stages.key(stages.datastore_key, model)}"
        with stages.exclusive(root), stages.timed("knn_lm_eval"):  # trials of one decoder take turns
            return lambda_grid_scores(stages, model, root)


KNN_LM = KNNLanguageModel(name="knn_lm", label="kNN-LM", colour="tab:orange", marker="s", module="KNNLM",
                          needs=("datastore",), weighs="kNN distribution", short="knn")
