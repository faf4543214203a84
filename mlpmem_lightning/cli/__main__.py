"""`python -m mlpmem_lightning.cli` is the `mlpmem` console script."""

from mlpmem_lightning.cli import main

main()
