"""Results columns every architecture's rows carry besides its scores (DESIGN.md "Results table"):
``params_non_embedding``, ``lr`` and ``epochs``. ``temperature`` comes with the scores (``Score.temperature``).

Why these: at vocabulary 16384 the non-embedding share of a small decoder is 9–43%, so fits on total parameters
alone distort the ladder; the learning rate and the passes over the data say how each run was trained, which a
reader needs to judge whether the baseline was tuned and whether it repeated its data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlpmem_lightning.study.stages import Stages


def decoder_lr(stages: Stages) -> float | None:
    """The decoder's peak learning rate: the one its fit was given (spec or shipped rung config), else the rung's;
    None for a pretrained base, which this study did not train."""
    if stages.source.pretrained:
        return None
    return stages.source.lr(stages.decoder_model.get("init_args", {}))


def train_split_tokens(stages: Stages) -> int:
    return int(len(stages.store.split("train")))


def row_columns(stages: Stages, memory_non_embedding: int, train_tokens: int) -> dict[str, Any]:
    """``params_non_embedding`` (the decoder's, plus the memory's), ``lr`` (the decoder's) and ``epochs``
    (``train_tokens`` over the train split's tokens: every pass the row's models made, decoder and memory)."""
    return {"params_non_embedding": stages.source.non_embedding(stages.family) + memory_non_embedding,
            "lr": decoder_lr(stages), "epochs": train_tokens / train_split_tokens(stages)}


def memory_columns(size: str, cfg, tokens: int, own_flops: int, targets: dict[str, Any] | None, rows: int | None,
                   d_model: int) -> dict[str, Any]:
    """A memory run's accounting as ``mlpmem collect`` writes it, on a fit or on a pretrained base: size, parameters,
    tokens, and FLOPs of its own training plus the search for its targets over ``rows`` datastore rows (none for
    the CE-only control, which has no targets), with the targets' fingerprint and T."""
    from mlpmem_lightning.knn.targets import default_nlist
    from mlpmem_lightning.models.flops import search_flops
    from mlpmem_lightning.models.memory import memory_non_embedding_params, memory_params

    search = 0
    if targets is not None:
        knn = targets["settings"]
        search = search_flops(rows, rows, d_model, knn["index"], knn.get("nlist") or default_nlist(rows),
                              knn.get("nprobe", 1))
    return {"memory_size": size, "params_memory": memory_params(cfg), "tokens": tokens, "flops": search + own_flops,
            "non_embedding": memory_non_embedding_params(cfg),
            **({"targets_fingerprint": targets["fingerprint"], "temperature": targets.get("temperature")}
               if targets is not None else {})}
