"""Where a trial's decoder comes from: a ladder rung the trial trains, or a pretrained base it only loads.

Everything a study counts about its decoder (width, parameters, forward FLOPs, the memory that matches it, its
learning rate) is asked of this object, so the stages and architectures never care which it is. A new kind of
decoder (another source of pretrained weights, a ladder of another family) is one more class here.

A pretrained base (the spec's ``base:``, a directory from ``mlpmem import-decoder`` or any ``save_pretrained``)
is counted from its weights, as ``mlpmem collect`` counts hand-made runs on one (:mod:`.collect_pretrained`): its
pretraining is not this study's compute and counts 0, and its memories are sized relative to it (``x0.25`` …).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LadderDecoder:
    """A rung of the study ladder (``models/ladder.py``), trained by the trial's decoder stage."""

    name: str
    pretrained = False

    @cached_property
    def rung(self):
        from mlpmem_lightning.models.ladder import get_size

        return get_size(self.name)

    @property
    def d_model(self) -> int:
        return self.rung.d_model

    def params_total(self, vocab: int, family: str) -> int:
        from mlpmem_lightning.models.ladder import total_params

        return total_params(self.rung, vocab, family)

    def non_embedding(self, family: str) -> int:
        from mlpmem_lightning.models.ladder import non_embedding_params

        return non_embedding_params(self.rung, family)

    def forward_flops(self, vocab: int, seq_len: int, family: str) -> int:
        """FLOPs of one forward token (the datastore pass, an online memory's keys)."""
        from mlpmem_lightning.models.ladder import forward_flops_per_token

        return forward_flops_per_token(self.rung, vocab, seq_len, family)

    def memory_config(self, size: str, vocab: int, family: str, block: str):
        from mlpmem_lightning.models.base_memory import is_relative, relative_config_for_rung
        from mlpmem_lightning.models.memory import memory_config

        if is_relative(size):
            return relative_config_for_rung(size, self.rung, family, vocab, block)
        return memory_config(size, self.rung.d_model, vocab, block)

    def matched_memory(self) -> str:
        from mlpmem_lightning.models.ladder import matched_memory

        return matched_memory(self.name).name

    def lr(self, init_args: dict[str, Any]) -> float:
        return peak_lr(init_args, self.rung)


@dataclass(frozen=True)
class PretrainedBase:
    """A pretrained decoder directory: loaded, never trained; ``name`` is the directory's (its ``decoder_size``)."""

    path: Path
    pretrained = True

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def loaded(self):
        """The base as every stage loads it (``models.loading.LoadedDecoder``): loaded once per trial or collect."""
        from mlpmem_lightning.models.loading import load_decoder

        return load_decoder(self.path)

    @property
    def _net(self):
        return self.loaded.net

    @property
    def d_model(self) -> int:
        return int(self._net.config.hidden_size)

    @property
    def vocab(self) -> int:
        """Its own vocabulary (a sweep passes the token store's, which the tokenizer check makes the same)."""
        return int(self._net.config.vocab_size)

    def params_total(self, vocab: int, family: str) -> int:
        return sum(p.numel() for p in self._net.parameters())  # a tied head once, as transformers counts it

    def non_embedding(self, family: str) -> int:
        from mlpmem_lightning.models.base_memory import base_non_embedding_params

        return base_non_embedding_params(self._net)

    def forward_flops(self, vocab: int, seq_len: int, family: str) -> int:
        from mlpmem_lightning.models.flops import forward_flops_of

        return forward_flops_of(self._net, seq_len)

    def memory_config(self, size: str, vocab: int, family: str, block: str):
        from mlpmem_lightning.models.base_memory import is_relative, relative_memory_config
        from mlpmem_lightning.models.memory import memory_config

        if is_relative(size):
            return relative_memory_config(size, self._net, block)
        return memory_config(size, self.d_model, vocab, block)

    def matched_memory(self) -> str:
        return "x1"  # the base's own non-embedding parameters

    def lr(self, init_args: dict[str, Any]) -> float | None:
        return None  # not trained here


def peak_lr(init_args: dict[str, Any], rung) -> float:
    """A decoder fit's peak LR from its model ``init_args`` (a sweep's, or a hand-made run's config.yaml)."""
    lr = init_args.get("lr")
    return float(lr) if lr is not None else float(rung.lr)


def is_pretrained(path: str | Path) -> bool:
    """Whether ``path`` is a transformers model directory (``import-decoder``, ``export-decoder``, any
    ``save_pretrained``) rather than a fit's run directory or checkpoint."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "config.yaml").is_file()


def decoder_source(base: str | None, decoder_size: str) -> LadderDecoder | PretrainedBase:
    """The spec's ``base`` if it has one (every trial's decoder), else the ladder rung ``decoder_size``."""
    return PretrainedBase(Path(base)) if base else LadderDecoder(decoder_size)
