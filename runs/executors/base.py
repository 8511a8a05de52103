"""What every executor shares: the command line's options, their checks, and the backend protocol.

A backend (:class:`Backend`) is an object made for one invocation from :class:`ExecutorOptions`:
``check`` runs before anything is written (bad options, GPU counts, cluster address: exit 2) and
``run`` executes the jobs and returns their results (None: submitted, not followed).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..config import ConfigError, LauncherConfig, SuiteConfig
from ..planning import Planned
from .job import Job, JobResult

log = logging.getLogger("runs.executors")
EXECUTORS = ("serial", "local", "ray", "slurm")
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # executor -> (module, pip extra)


@dataclass
class ExecutorOptions:
    """The command line's executor options (validated by :func:`check_options`)."""

    executor: str = "serial"
    workers: int | None = None  # local: processes at once (default: visible GPUs, else 1)
    share_gpus: bool = False  # local: allow more workers than visible GPUs (round-robin)
    address: str | None = None  # ray: cluster address ("auto", "host:port"); None = start a local Ray
    retries: int = 1  # times a job whose process died is started again (it resumes its checkpoint)
    wait: bool = True  # follow the jobs and write the table; False: submit and return
    gpus_per_run: float | None = None  # ray/slurm: GPUs per job (None: 1 if the run's device is not cpu)
    cpus_per_run: int | None = None  # ray/slurm: CPUs per job (also its torch threads)
    slurm: dict[str, Any] = field(default_factory=dict)  # --partition --time --mem --account overrides


def missing_extra(executor: str) -> str | None:
    """The one-line message when ``executor``'s package is not installed, else None."""
    if executor not in EXTRAS:
        return None
    module, extra = EXTRAS[executor]
    if importlib.util.find_spec(module) is not None:
        return None
    return (f"--executor {executor} needs the '{module}' package: pip install -e \".[{extra}]\" "
            f"(or pip install -c constraints.txt -e \".[{extra}]\")")


def check_options(options: ExecutorOptions) -> None:
    """Bad executor options -> one :class:`ConfigError` (exit 2, nothing started)."""
    if options.executor not in EXECUTORS:
        raise ConfigError(f"--executor {options.executor!r}: unknown; choose one of {', '.join(EXECUTORS)}")
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers {options.workers}: must be >= 1")
    if options.retries < 0:
        raise ConfigError(f"--retries {options.retries}: must be >= 0")
    if options.cpus_per_run is not None and options.cpus_per_run < 1:
        raise ConfigError(f"--cpus-per-run {options.cpus_per_run}: must be >= 1")
    if options.gpus_per_run is not None and options.gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run {options.gpus_per_run}: must be >= 0")
    if options.workers is not None and options.executor not in ("local",):
        raise ConfigError(f"--workers applies to --executor local only (got --executor {options.executor})")
    if options.address is not None and options.executor != "ray":
        raise ConfigError(f"--address applies to --executor ray only (got --executor {options.executor})")
    if not options.wait and options.executor in ("serial", "local"):
        raise ConfigError(f"--no-wait needs a scheduler that outlives this process (ray or slurm), "
                          f"not --executor {options.executor}")
    problem = missing_extra(options.executor)
    if problem:
        raise ConfigError(problem)


def launcher(suite: SuiteConfig, options: ExecutorOptions) -> LauncherConfig:
    """The suite's ``launcher:`` block with the command line's slurm options on top."""
    values = {k: v for k, v in options.slurm.items() if v is not None}
    if options.gpus_per_run is not None:
        values["gpus_per_run"] = int(options.gpus_per_run)
    if options.cpus_per_run is not None:
        values["cpus_per_run"] = options.cpus_per_run
    try:
        return replace(suite.launcher, **values)
    except ValueError as error:
        raise ConfigError(f"slurm options: {error}") from None


def absolute(suite: SuiteConfig) -> SuiteConfig:
    """The suite with an absolute ``output_dir`` (workers may start in another directory)."""
    return replace(suite, output_dir=str(Path(suite.output_dir).resolve()))


def announce(result: JobResult) -> None:
    """The one console line per ended job."""
    if result.status == "finished":
        log.info("%s: finished (%s pid %d)", result.run_id, result.host, result.pid)
    elif result.status in ("skipped", "busy"):
        log.info("%s", result.reason)
    else:
        log.error("%s: %s: %s", result.run_id, result.status, result.reason)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Backend(Protocol):
    """Where the jobs of one invocation run (serial, local, ray, slurm)."""

    on_this_machine: bool  # jobs run on this machine: plan compares machine facts, preflight checks here
    in_process: bool  # jobs run in this process (relative output_dir and data_root stay relative)
    job_fields: dict[str, Any]  # Job fields this backend sets (cwd, progress, machine_checked)

    def check(self, suite: SuiteConfig, planned: list[Planned]) -> None:
        """Refuse (ConfigError, exit 2) before anything is written."""

    def run(self, suite: SuiteConfig, jobs: list[Job]) -> list[JobResult] | None:
        """Execute the jobs; their results (None: submitted and not followed, ``--no-wait``)."""


__all__ = ["EXECUTORS", "Backend", "ExecutorOptions", "absolute", "announce", "check_options", "cpu_count",
           "launcher", "missing_extra"]
