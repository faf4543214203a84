"""`python -m mlpmem_lightning` is the `mlpmem` console script."""

from mlpmem_lightning.cli import main

main()
