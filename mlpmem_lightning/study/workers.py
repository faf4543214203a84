"""Several sweep workers on one machine (and one GPU): ``mlpmem sweep --workers N``.

A small model leaves most of an H200 idle, so N processes run the same study at once. They share the study's
storage (Optuna) and its artifact directories, which are locked: a worker that needs a decoder, datastore or
targets another one is building waits for it (``study/locks.py``). On a GPU each worker may allocate at most
1/N of the device's memory (``torch.cuda.set_per_process_memory_fraction``), so one large trial cannot starve
the others. With several GPUs, the workers are dealt out over them, one GPU each (``worker_env``). Processes rather
than threads: each has its own CUDA context, compiled graphs and Python.

Each worker also gets its share of the CPU cores (``OMP_NUM_THREADS``, unless the user set it): faiss's k-means and
torch's CPU ops otherwise start one thread per core in every worker, and N workers' spinning OpenMP pools on the
same cores slow each other down. Workers log with timestamps (``MLPMEM_LOG_TIME``), so a stage's phases can be
timed from the logs afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from queue import Queue

from mlpmem_lightning.core.errors import UserError

FRACTION_ENV = "MLPMEM_GPU_MEMORY_FRACTION"
LOG_TIME_ENV = "MLPMEM_LOG_TIME"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (``torch.cuda.device_count`` when unset;
    it creates no CUDA context, and the workers are separate processes anyway)."""
    if (listed := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(workers: int, index: int = 0, gpus: list[str] | None = None) -> dict[str, str]:
    """The environment of process ``index`` of ``workers``: its GPU, its GPU memory fraction, its share of the cores
    (kept where the user set ``OMP_NUM_THREADS``) and timestamped logs.

    With several GPUs visible, worker ``i`` gets GPU ``i mod n`` alone (``CUDA_VISIBLE_DEVICES``) and 1/(workers on
    that GPU) of its memory: two workers on two GPUs run one per GPU, as a user would start them by hand, instead
    of both on the first."""
    gpus = visible_gpus() if gpus is None else gpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = {"OMP_NUM_THREADS": str(max(1, cores // workers)), **os.environ,
           FRACTION_ENV: f"{1.0 / workers:.6f}", LOG_TIME_ENV: "1"}
    if len(gpus) > 1:
        slot = index % len(gpus)
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot]
        env[FRACTION_ENV] = f"{1.0 / len(range(slot, workers, len(gpus))):.6f}"
    return env


def limit_gpu_memory() -> None:
    """Apply the share of GPU memory a worker was given (no-op outside ``--workers`` or without a GPU)."""
    share = os.environ.get(FRACTION_ENV)
    if share is None:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(share))


def run_processes(commands: list[list[str]], workers: int, logs: Path, prefix: str) -> None:
    """Run ``mlpmem COMMAND…`` for each of ``commands``, ``workers`` at a time, each with 1/``workers`` of the GPU's
    memory and of the cores (:func:`worker_env`) and its log in ``logs/<prefix><i>.log``. A pool of subprocesses
    rather than concurrent.futures' process pool: each task is a whole CLI run with its own CUDA context and log, as
    a user would start it by hand.

    Raises the one-line error naming the logs of the tasks that failed, once all have ended."""
    from concurrent.futures import ThreadPoolExecutor

    logs.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus()
    slots: Queue[int] = Queue()  # a free worker slot: its GPU and memory share (worker_env), reused by later tasks
    for slot in range(workers):
        slots.put(slot)

    def one(i: int) -> int:
        slot = slots.get()
        try:
            with (logs / f"{prefix}{i}.log").open("ab") as log:
                log.write(f"$ mlpmem {' '.join(commands[i])}\n".encode())
                log.flush()
                return subprocess.run([sys.executable, "-m", "mlpmem_lightning.cli", *commands[i]], stdout=log,
                                      stderr=subprocess.STDOUT, env=worker_env(workers, slot, gpus)).returncode
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(workers) as pool:  # threads only wait on their process
        codes = list(pool.map(one, range(len(commands))))
    failed = [logs / f"{prefix}{i}.log" for i, c in enumerate(codes) if c != 0]
    if failed:
        lines = failed[0].read_text(errors="replace").strip().splitlines() or ["(empty log)"]
        raise UserError(f"{len(failed)} of {len(commands)} processes failed (logs {logs}/{prefix}*.log; the first, "
                        f"{failed[0].name}, ends: {lines[-1][:300]}); run the same command again to resume")


def run_workers(spec_path: Path, workers: int, logs: Path, flags: list[str] = ()) -> list[Path]:
    """Run ``workers`` processes of ``mlpmem sweep --config spec_path [flags]`` (the command's ``--set``, ``--out``,
    ``--storage``); their logs go to ``logs/worker<i>.log``.

    Returns the log paths. Raises the one-line error naming the logs of the workers that failed."""
    logs.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus()
    procs, paths = [], []
    for i in range(workers):
        path = logs / f"worker{i}.log"
        paths.append(path)
        with path.open("ab") as log:  # appended: a re-run keeps the earlier workers' logs
            procs.append(subprocess.Popen([sys.executable, "-m", "mlpmem_lightning.cli", "sweep", "--config",
                                           str(spec_path), *flags], stdout=log, stderr=subprocess.STDOUT,
                                          env=worker_env(workers, i, gpus)))
        time.sleep(0.5)  # staggered: the first creates the study and queues the grid
    print(f"sweep: {workers} workers, logs in {logs}/worker*.log", flush=True)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    failed = [str(paths[i]) for i, c in enumerate(codes) if c != 0]
    if failed:
        raise UserError(f"{len(failed)} of {workers} sweep workers failed: see {', '.join(failed)}; "
                        "run the same command again to resume")
    return paths
