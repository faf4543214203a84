"""Decoder + MLP Memory (Wei et al. 2025): a memory trained on the kNN targets, mixed with the frozen decoder.

Its training compute is everything it took: the decoder, the datastore pass, the search for every training
token's targets and the memory's own training (plus a decoder forward per token when keys are recomputed
online). It is compared with the kNN-LM it imitates on the same decoder. Its rows record the targets' kNN
temperature (``temperature``) and the share of kNN mass their top-K tokens kept (``targets_mass_kept_mean``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mlpmem_lightning.study.architectures.base import Architecture, Own, Score, lambda_grid_scores
from mlpmem_lightning.study.stages import Stages

# MemoryLM's defaults that make it the paper's memory (random head, dropout 0.1), written into every fit's config so
# that memory runs are keyed by them: runs trained under other defaults are never resumed as these
PAPER_MEMORY = {"init_head_from_decoder": False, "dropout": 0.1}


class MLPMemory(Architecture):
    def data(self, stages: Stages) -> dict:
        """What its fit and evaluation read besides the token store: the targets."""
        return {"targets": str(stages.targets_dir)}

    def run_dir(self, stages: Stages) -> Path:
        """``memories/<memory>-on-<size>-seed<s>-<hash8>``: keyed by its fit's config (decoder and targets
        directories, which carry their keys, budget, α, mode, trainer, batch)."""
        spec = stages.spec
        key = stages.config_key("fit", self.model(stages, max_tokens=spec.memory_tokens), self.data(stages))
        return stages.out / "memories" / f"{stages.memory_size}-on-{stages.tag}-{key}"

    def model(self, stages: Stages, **init_args) -> dict:
        spec = stages.spec
        # on a GPU, as the decoders: memory and loss compiled, the whole step one CUDA graph (2.9x at mem-6m online)
        speed = {"compile": True, "cuda_graph": True} if stages.on_gpu() else {}
        return {"class_path": self.module, "init_args": {
            "decoder": str(stages.decoder_run), "size": stages.memory_size, "alpha": spec.alpha,
            "mode": self.mode(stages), **PAPER_MEMORY, **speed, **init_args}}

    def mode(self, stages: Stages) -> str:
        """How its keys are read (``online``: a decoder forward per training token, counted in its FLOPs)."""
        return stages.spec.memory_mode

    def fit(self, stages: Stages) -> Own:
        from mlpmem_lightning.models.families import get_family
        from mlpmem_lightning.models.flops import memory_train_flops
        from mlpmem_lightning.models.memory import memory_flops_per_token, memory_non_embedding_params, memory_params

        spec = stages.spec
        run = self.run_dir(stages)
        with stages.exclusive(run), stages.timed("memory_fit"):
            stages.run("fit", self.model(stages, max_tokens=spec.memory_tokens), run, self.data(stages))
        block = get_family(stages.family).memory_block  # MemoryLM's default block for this decoder
        cfg = stages.source.memory_config(stages.memory_size, stages.vocab, stages.family, block)
        tokens = stages.tokens(spec.memory_tokens)
        decoder_forward = stages.source.forward_flops(stages.vocab, spec.seq_len, stages.family)
        flops = memory_train_flops(memory_flops_per_token(cfg, train=True), tokens,
                                   decoder_forward if self.mode(stages) == "online" else 0)
        stages.attrs.update(flops_memory_train=flops, params_memory=memory_params(cfg), memory_tokens=tokens)
        return Own(stages.memory_size, memory_params(cfg), tokens, flops, memory_non_embedding_params(cfg))

    def evaluate(self, stages: Stages) -> dict[str, Score]:
        run = self.run_dir(stages)
        with stages.exclusive(run), stages.timed("memory_eval"):
            scores = lambda_grid_scores(stages, self.model(stages), run, self.data(stages),
                                        run / "checkpoints" / "best.ckpt")
        t = self.temperature(stages)
        return {split: replace(score, temperature=t) for split, score in scores.items()}

    def temperature(self, stages: Stages) -> float | None:
        """The kNN temperature of the targets it imitated."""
        return stages.attrs.get("targets_temperature")

    def account(self, stages: Stages, own: Own) -> dict:
        """Besides the base accounting, the share of kNN mass the targets' top-K tokens kept."""
        mass = stages.attrs.get("targets_mass_kept_mean")
        return {**super().account(stages, own), **({"targets_mass_kept_mean": mass} if mass is not None else {})}


MLP_MEMORY = MLPMemory(name="mlp_memory", label="decoder+memory", colour="tab:green", marker="^", module="MemoryLM",
                       needs=("targets",), weighs="memory", imitates="knn_lm", short="memory")
