"""``--executor ray``: one Ray task per (run, seed) (``pip install -e ".[ray]"``).

``--address auto|host:port`` joins a running cluster (``ray.init(address=...)``); without it a local
Ray is started with this machine's cores. Each task asks for ``--cpus-per-run`` CPUs (default 1;
also its torch threads) and ``--gpus-per-run`` GPUs (default 1 when the run's device is not ``cpu``
and the cluster has GPUs, else 0). Ray retries a task whose worker process died (node lost, OOM
kill) up to ``--retries`` times (``max_retries``; ``retry_exceptions=False``); the retried task
takes over the dead worker's stale lock and resumes from the checkpoint. A run that fails on its own
returns a failed result and is never retried.

``--no-wait`` is refused: a Ray driver's tasks end with it; submit the driver itself with Ray's own
``ray job submit -- python -m runs run SUITE --executor ray --address auto``.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from typing import Any

from ..config import ConfigError, SuiteConfig
from ..planning import Planned
from .base import ExecutorOptions, announce
from .job import Job, JobResult, run_job

log = logging.getLogger("runs.executors")


def _reachable(address: str) -> str | None:
    """None when ``host:port`` accepts a TCP connection within 5 s, else why not."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return "expected auto, host:port or ray://host:port"
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        return error.strerror or str(error)
    return None


def _gpus(options: ExecutorOptions, jobs: list[Job]) -> float:
    import ray  # the optional extra

    if options.gpus_per_run is not None:
        return options.gpus_per_run
    wants = any(job.run.train.device != "cpu" for job in jobs)
    return 1.0 if wants and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _task(job: Job) -> JobResult:
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("runs", "strategies", "benchmarks"):
        logging.getLogger(name).setLevel(logging.INFO)
    return run_job(job)


class RayBackend:
    on_this_machine = False
    in_process = False
    job_fields: dict[str, Any] = {"progress": False}

    def __init__(self, options: ExecutorOptions, *, fail_fast: bool = False) -> None:
        self.options = options
        self.started_here = False  # this driver started a local Ray (stopped after the run)

    def check(self, suite: SuiteConfig, planned: list[Planned]) -> None:
        """Connect to (or start) Ray before anything is written; an unreachable address exits 2."""
        options = self.options
        if not options.wait:
            raise ConfigError("--no-wait with --executor ray: a Ray driver's tasks end with it; submit the driver "
                              "with `ray job submit -- python -m runs run SUITE --executor ray --address auto`")
        if options.address not in (None, "auto"):
            problem = _reachable(options.address)
            if problem:
                raise ConfigError(f"--address {options.address}: no Ray cluster reachable there ({problem})")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray  # the optional extra (pip install -e ".[ray]")

        if ray.is_initialized():
            return
        try:
            if options.address:
                ray.init(address=options.address, runtime_env={"env_vars": {"WANDB_SILENT": "true"}})
            else:
                ray.init(include_dashboard=False, runtime_env={"env_vars": {"WANDB_SILENT": "true"}})
                self.started_here = True
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(f"--address {options.address}: cannot join a Ray cluster: "
                              f"{str(error).strip().splitlines()[0][:200]}") from None

    def run(self, suite: SuiteConfig, jobs: list[Job]) -> list[JobResult]:
        try:
            return _run(jobs, self.options)
        finally:
            if self.started_here:  # a joined cluster keeps running
                import ray  # the optional extra

                ray.shutdown()
                self.started_here = False


def _run(jobs: list[Job], options: ExecutorOptions) -> list[JobResult]:
    import ray  # the optional extra

    cpus = options.cpus_per_run or 1
    gpus = _gpus(options, jobs)
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=options.retries, retry_exceptions=False)(_task)
    refs = {}
    for job in jobs:
        refs[remote.remote(replace(job, threads=cpus))] = job
        log.info("%s: submitted to Ray (%d CPU, %g GPU)", job.run_id, cpus, gpus)
    results = []
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            job = refs.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as error:  # the worker died more than --retries times
                reason = str(error).strip().splitlines()[0][:300]
                result = JobResult(job.run_id, "failed", f"{job.run_id}: Ray task died after {options.retries} "
                                                         f"retries ({reason}); its checkpoint is kept: run again")
            announce(result)
            results.append(result)
    return results
