"""Decoder-only: the baseline every other architecture is compared with.

It trains nothing of its own (the trial's shared decoder is it) and is scored by ``DecoderLM``'s own
``validate``/``test`` on the decoder run's ``checkpoints/best.ckpt``: the same network on the same
windows as the kNN-LM's and the memory's λ=0, so the numbers agree with theirs exactly on CPU.
"""

from __future__ import annotations

import math

from mlpmem_lightning.study.architectures.base import Architecture, Score
from mlpmem_lightning.study.stages import Stages


class DecoderOnly(Architecture):
    def evaluate(self, stages: Stages) -> dict[str, Score]:
        init, run, ckpt = stages.decoder_eval()  # a fit's best checkpoint, or a pretrained base's directory
        model = {"class_path": self.module, "init_args": init}
        # logs under <run>/validate and <run>/test, as `mlpmem validate` does; one worker at a time
        with stages.exclusive(run), stages.timed("decoder_eval"):
            valid = stages.run("validate", model, run, ckpt=ckpt)
            test = stages.run("test", model, run, ckpt=ckpt)
        # the loss as log of the logged perplexity: the value rows had when they were read off the kNN-LM's λ=0
        # (``val/decoder_ppl``, bit-identical to ``val/ppl`` here), so results.csv files stay comparable bit for bit
        return {"valid": Score(math.log(valid["val/ppl"])), "test": Score(math.log(test["test/ppl"]))}


DECODER = DecoderOnly(name="decoder", label="decoder-only", colour="tab:blue", marker="o", module="DecoderLM",
                      needs=("decoder",), baseline=True)
