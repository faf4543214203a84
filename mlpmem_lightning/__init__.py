"""mlpmem-lightning: scaling studies of MLP Memory with PyTorch Lightning."""

__version__ = "0.1.0"
