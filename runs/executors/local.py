"""``--executor local --workers N``: N spawned worker processes on this machine, one job each.

With GPUs (``torch.cuda.device_count()`` > 0 and a run whose device is not ``cpu``) each worker is
pinned to one GPU through ``CUDA_VISIBLE_DEVICES`` (it sees it as ``cuda:0``); more workers than
GPUs is an error naming both counts unless ``--share-gpus`` (then workers share GPUs round-robin).
Without a GPU the cores are split: each worker runs ``torch.set_num_threads(cores // N)`` (at least
1), recorded in the run's ``provenance.json`` (``torch_threads``).

A process per job (``multiprocessing`` spawn, no fork of a process holding CUDA or Ray state): a
job whose process dies (killed, OOM) is started again up to ``--retries`` times and resumes its
checkpoint (its stale lock is taken over); a run that fails on its own is reported, never retried.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
from collections import deque
from dataclasses import asdict, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, SuiteConfig
from ..io import atomic_write_text
from ..planning import Planned
from .base import ExecutorOptions, announce, cpu_count
from .job import Job, JobResult, run_job

log = logging.getLogger("runs.executors")


def _gpu_mode(planned: list[Planned]) -> int:
    """Visible GPUs when a selected run may use one, else 0."""
    if not torch.cuda.is_available() or all(p.run.train.device == "cpu" for p in planned):
        return 0
    return torch.cuda.device_count()


def workers_and_gpus(options: ExecutorOptions, planned: list[Planned]) -> tuple[int, int]:
    gpus = _gpu_mode(planned)
    workers = options.workers or max(gpus, 1)
    if gpus and workers > gpus and not options.share_gpus:
        raise ConfigError(f"--workers {workers} but this machine shows {gpus} GPU(s) (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use --workers {gpus} or --share-gpus")
    return workers, gpus


class LocalBackend:
    on_this_machine = True
    in_process = False
    job_fields: dict[str, Any] = {"progress": False}

    def __init__(self, options: ExecutorOptions, *, fail_fast: bool = False) -> None:
        self.options = options  # --fail-fast: the workers run at once; every started job ends

    def check(self, suite: SuiteConfig, planned: list[Planned]) -> None:
        self.workers, _ = workers_and_gpus(self.options, planned)

    def run(self, suite: SuiteConfig, jobs: list[Job]) -> list[JobResult]:
        return run(jobs, self.workers, self.options.retries)


def _setup_child_logging(run_id: str) -> None:
    """Console: warnings only, prefixed with the run (the driver prints the start/end lines)."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter(f"[{run_id}] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(console)
    root.setLevel(logging.WARNING)
    for name in ("runs", "strategies", "benchmarks"):
        logging.getLogger(name).setLevel(logging.INFO)  # log.txt gets our INFO lines
    os.environ.setdefault("WANDB_SILENT", "true")


def _child(job: Job, result_path: str, gpu: int | None) -> None:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    _setup_child_logging(job.run_id)
    try:
        result = run_job(job)
    except KeyboardInterrupt:
        result = JobResult(job.run_id, "interrupted", "interrupted; the last checkpoint is kept")
    atomic_write_text(result_path, json.dumps(asdict(result)))
    if result.status == "interrupted":
        sys.exit(130)


def _read_result(path: Path) -> JobResult | None:
    try:
        return JobResult(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def run(jobs: list[Job], workers: int, retries: int) -> list[JobResult]:
    """Run the jobs in at most ``workers`` processes at once; their results, in end order."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and any(j.run.train.device != "cpu"
                                                                          for j in jobs) else 0
    threads = None if gpus else max(1, cpu_count() // workers)
    ctx = mp.get_context("spawn")
    pending: deque[tuple[Job, int]] = deque((replace(job, threads=threads), 0) for job in jobs)
    free = list(range(workers))
    running: dict[Any, tuple[Any, Job, int, int, Path]] = {}
    results: list[JobResult] = []
    with tempfile.TemporaryDirectory(prefix="runs-local-") as tmp:
        try:
            while pending or running:
                while pending and free:
                    job, attempt = pending.popleft()
                    slot = free.pop(0)
                    gpu = slot % gpus if gpus else None
                    path = Path(tmp) / f"{job.run_id}-{attempt}.json"
                    proc = ctx.Process(target=_child, args=(job, str(path), gpu), name=f"runs-{job.run_id}")
                    proc.start()
                    running[proc.sentinel] = (proc, job, attempt, slot, path)
                    where = f"GPU {gpu}" if gpu is not None else f"{threads} torch threads"
                    log.info("%s: started (worker pid %d, %s)", job.run_id, proc.pid, where)
                for sentinel in wait(list(running)):
                    proc, job, attempt, slot, path = running.pop(sentinel)
                    proc.join()
                    free.append(slot)
                    result = _read_result(path)
                    if result is None:
                        result = _died(job, attempt, proc.exitcode, retries, pending)
                    if result is not None:
                        announce(result)
                        results.append(result)
        except KeyboardInterrupt:
            _stop(running)
            raise
    return results


def _died(job: Job, attempt: int, code: int | None, retries: int, pending: deque) -> JobResult | None:
    if attempt < retries:
        log.warning("%s: worker died (exit code %s); starting it again (%d of %d), it resumes its checkpoint",
                    job.run_id, code, attempt + 1, retries)
        pending.append((job, attempt + 1))
        return None
    return JobResult(job.run_id, "failed", f"{job.run_id}: worker died (exit code {code}) after {attempt + 1} "
                                           f"start(s); its checkpoint is kept: run the suite again to resume")


def _stop(running: dict) -> None:
    """Ctrl-C reached the workers too (same process group): let them save, then end them."""
    for proc, *_ in running.values():
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
