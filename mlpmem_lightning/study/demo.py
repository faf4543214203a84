"""`mlpmem demo`: the demo study on the embedded corpus, on CPU, then its report.

It is ``mlpmem sweep --config sweeps/demo.yaml`` with the artifacts under ``--out`` (token
store, decoder and memory checkpoints, datastores, targets; the study's ``demo/results.csv``) followed by
``mlpmem report`` into ``demo/report`` beside it. Every stage reuses finished artifacts, so re-running continues.
"""

from __future__ import annotations

import time
from pathlib import Path

from mlpmem_lightning.core.resources import sweeps_dir

SPEC = sweeps_dir() / "demo.yaml"


def run_demo(out: Path, spec: Path = SPEC) -> Path:
    from mlpmem_lightning.study.report import write_report
    from mlpmem_lightning.study.results import read_results
    from mlpmem_lightning.study.sweep import run_sweep

    start = time.time()
    results = run_sweep(spec, out=out)
    report = write_report(results, results.parent / "report", bootstrap=300)  # 300 resamples: seconds, not a minute
    df = read_results(results)
    table = df.pivot_table(index=["decoder_size", "arch"], columns="split", values="ppl").round(2)
    print(table.to_string())
    print(f"demo finished in {time.time() - start:.0f} s; results: {results}; report: {report}")
    return report
