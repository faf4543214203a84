"""The decoder-family registry: every count, builder and loader looks its family up here.

A family (:class:`~mlpmem_lightning.models.families.base.DecoderFamily`) says everything that differs
between decoder architectures: its transformers classes, FFN width, parameter and FLOP counts, the
module whose input is the kNN key, and the memory block matched to it. To add one, write
``models/families/<name>.py`` with a subclass and add its ``register_family`` line at the bottom of
this file; the ladder, ``mlpmem sizes``, ``DecoderLM``, the loaders and the FLOP accounting follow.

The base class lives in ``base.py`` (re-exported here) so that a family module does not import this
package's ``__init__``, which imports it: that would be an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.models.families.base import DEFAULT_CONTEXT, DecoderFamily, DecoderSize
from mlpmem_lightning.models.families.gpt2 import GPT2
from mlpmem_lightning.models.families.llama import Llama

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DEFAULT_CONTEXT", "FAMILIES", "DecoderFamily", "DecoderSize", "family_for_block",
           "family_for_model_type", "family_of", "get_family", "model_types", "register_family",
           "unregister_family"]

FAMILIES: dict[str, DecoderFamily] = {}
WHERE = "mlpmem_lightning/models/families/"


def register_family(family: DecoderFamily) -> DecoderFamily:
    """Add a family; its name and the transformers model types it loads must not be taken."""
    if family.name in FAMILIES:
        raise ValueError(f"decoder family {family.name!r} is already registered")
    if taken := set(family.model_types) & set(model_types()):
        raise ValueError(f"model types {sorted(taken)} already belong to a registered family")
    FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family (tests register toy ones and take them out again)."""
    del FAMILIES[name]


def get_family(family: str | DecoderFamily) -> DecoderFamily:
    """The registered family of that name (a family object is returned as it is)."""
    if isinstance(family, DecoderFamily):
        return family
    if family not in FAMILIES:
        raise UserError(f"unknown decoder family {family!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def model_types() -> tuple[str, ...]:
    """Every transformers ``model_type`` a registered family loads."""
    return tuple(t for f in FAMILIES.values() for t in f.model_types)


def family_for_model_type(model_type: str) -> DecoderFamily:
    """The family that loads a transformers ``config.model_type`` (``mistral`` -> ``llama``)."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise UserError(f"unsupported decoder family {model_type!r}: use a causal LM of model type "
                    f"{', '.join(model_types())}, or register a family in {WHERE}")


def family_of(model: PreTrainedModel) -> DecoderFamily:
    """The family of a built or loaded transformers model."""
    return family_for_model_type(model.config.model_type)


def family_for_block(block: str) -> DecoderFamily:
    """The family a memory block is matched to in parameters: the first registered one using that block."""
    for family in FAMILIES.values():
        if family.memory_block == block:
            return family
    raise UserError(f"no decoder family uses the memory block {block!r}: register one in {WHERE}")


# The registry: one line per family module.
register_family(Llama())
register_family(GPT2())
