"""The cross-entropy-only control: the same memory, budget and mixing as ``mlp_memory``, trained with α = 0.

It separates what imitating the kNN distribution buys from what extra training of a memory-shaped network on
the same tokens buys: the loss is the plain next-token cross-entropy of the memory, so no datastore, search or
targets are built or charged (its FLOPs are the decoder's training and its own: the memory's training and the
frozen decoder's forward for its keys). It reads the keys online at the spec's datastore layer (the layer
``mlp_memory`` reads), and runs at the spec's ``control_sizes`` only (or at every size when ``architectures``
lists it and ``control_sizes`` is unset).
"""

from __future__ import annotations

from mlpmem_lightning.study.architectures.base import Own
from mlpmem_lightning.study.architectures.mlp_memory import MLPMemory
from mlpmem_lightning.study.spec import SweepSpec
from mlpmem_lightning.study.stages import Stages


class CrossEntropyMemory(MLPMemory):
    def data(self, stages: Stages) -> dict:
        return {}  # no targets

    def model(self, stages: Stages, **init_args) -> dict:
        base = super().model(stages, **init_args)
        layer = stages.spec.datastore.get("layer", -1)
        return {**base, "init_args": {**base["init_args"], "alpha": 0.0, "key_layer": layer}}

    def mode(self, stages: Stages) -> str:
        return "online"  # offline keys come from a datastore, which this control does not build

    def temperature(self, stages: Stages) -> float | None:
        return None

    def account(self, stages: Stages, own: Own) -> dict:
        return super(MLPMemory, self).account(stages, own)  # no targets: no mass kept to report

    def runs_at(self, spec: SweepSpec, decoder_size: str) -> bool:
        if spec.control_sizes is not None:
            return decoder_size in spec.control_sizes
        return spec.architectures is not None and self.name in spec.architectures


MLP_MEMORY_CE = CrossEntropyMemory(name="mlp_memory_ce", label="decoder+memory (CE only)", colour="tab:purple",
                                   marker="v", module="MemoryLM", needs=("decoder",), weighs="memory",
                                   short="memory-ce")
