"""mlpmem-lightning: scaling studies of MLP Memory with PyTorch Lightning."""

__version__ = "0.1.0"

from mlpmem_lightning.core import legacy as _legacy  # noqa: E402  (old class paths in checkpoints keep loading)

_legacy.install()
