"""Module paths of mlpmem 0.1's flat layout, kept importable for what recorded them.

Lightning checkpoints written before the package was split into subpackages record their module's class path
(``_class_path: mlpmem_lightning.decoder_lm.DecoderLM``) and LightningCLI imports it when ``--ckpt_path``
is given; configs saved by those runs name the same paths. An import of an old path returns the module that
now holds the code, so those checkpoints and configs keep loading unchanged. (``data``, ``knn``, ``cli`` and
``bench`` are packages now and need no alias: no checkpoint or config names a class of theirs.)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "errors": "core.errors", "artifacts": "core.artifacts", "ranks": "core.distributed",
    "corpora": "data.corpora", "cleaners": "data.cleaners", "tokenizer": "data.tokenizer",
    "token_store": "data.token_store",
    "sizes": "models.ladder", "decoder": "models.decoder", "memory": "models.memory",
    "checkpoints": "models.loading", "flops": "models.flops",
    "datastore": "knn.datastore", "targets": "knn.targets", "index": "knn.index",
    "search": "knn.search", "clustered_search": "knn.search.clustered",
    "decoder_lm": "lightning.decoder_lm", "knn_lm": "lightning.knn_lm", "memory_lm": "lightning.memory_lm",
    "metrics": "lightning.evaluation", "training": "lightning.optim", "memory_loss": "lightning.losses",
    "lightning_cli": "cli.lightning", "configs": "cli.configs",
    "pipeline": "study.pipeline", "sweep": "study.sweep", "results": "study.results", "analysis": "study.analysis",
    "report": "study.report", "demo": "study.demo", "generate": "inference.generate", "bench_infer": "bench.infer",
}
PREFIX = "mlpmem_lightning."


class _LegacyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(PREFIX)
        if not fullname.startswith(PREFIX) or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(PREFIX + MOVED[spec.name.removeprefix(PREFIX)])

    def exec_module(self, module) -> None:
        """The target module is already executed."""


def install() -> None:
    """Right after the path finder: real modules are found first, the aliases before any other finder (an
    editable install's finder would otherwise find a stale copy of an old module)."""
    import importlib.machinery

    if any(isinstance(f, _LegacyFinder) for f in sys.meta_path):
        return
    at = next((i + 1 for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(at, _LegacyFinder())
