"""Executors: where the jobs of a suite run. One job = one (run, seed) run by :func:`job.run_job`.

=========  ====================================================================================
serial     in this process, one after another (the default; :func:`runs.runner.run_suite`)
local      ``--workers N`` spawned processes on this machine, each pinned to one GPU through
           ``CUDA_VISIBLE_DEVICES`` (or, without a GPU, the cores split: torch threads per worker)
ray        one Ray task per job (``num_gpus``/``num_cpus`` from the options); ``--address``
           joins a cluster, none starts a local Ray; a task whose process dies is retried
slurm      one submitit job array per invocation, a task per job; requeued on preemption/time-out
=========  ====================================================================================

The driver (:func:`run_suite`) validates and plans the suite like the serial path (refusals exit 2
before anything starts), writes a probe file into the output folder, hands the startable jobs to the
executor, follows them (one console line per started / finished / failed run) and writes the suite
table once every job has ended; ``--no-wait`` returns after submitting (Slurm, Ray).
There is no scheduler here: the executors are multiprocessing, Ray and Slurm themselves.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import ConfigError, LauncherConfig, SuiteConfig
from .job import STARTABLE, Job, JobResult, write_probe

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


def jobs_of(suite: SuiteConfig, planned: list[Any], probe: str, **fields: Any) -> list[Job]:
    return [Job(suite, p.run, p.seed, p.action, probe=probe, **fields) for p in planned if p.action in STARTABLE]


def run_suite(suite: SuiteConfig, options: ExecutorOptions, *, online: bool = False,
              only: list[str] | None = None, rerun_changed: bool = False, rerun_failed: bool = False,
              verbose: bool = False) -> Any:
    """Plan, submit to ``options.executor``, follow, write the table; a :class:`runs.runner.SuiteOutcome`."""
    from ..report import write_results
    from ..runner import SuiteOutcome, plan, preflight, refuse_locked, suite_records
    from ..status import write_plan

    check_options(options)
    suite = absolute(suite)
    on_this_machine = options.executor == "local"
    planned = plan(suite, only, rerun_changed=rerun_changed, rerun_failed=rerun_failed,
                   compare_machine=on_this_machine)
    refuse_locked(suite, planned)
    if on_this_machine:
        preflight(suite, planned)
    backend = _backend(options.executor)
    backend.check(suite, options, planned)  # e.g. GPU count, Ray address: before anything is written
    probe = write_probe(suite)
    write_plan(suite, only)
    outcome = SuiteOutcome()
    for item in planned:
        run_id = f"{item.run.name}-seed{item.seed}"
        if item.action == "skip-finished":
            outcome.skipped.append(run_id)
        elif item.action == "skip-failed":
            reason = (item.state.record or {}).get("reason", "?")
            outcome.failed.append((run_id, f"failed earlier: {reason} (--rerun-failed restarts it)"))
    jobs = jobs_of(suite, planned, probe, online=online, verbose=verbose, progress=False)
    results = backend.run(jobs, options) if jobs else []
    if results is None:  # submitted, not followed (--no-wait)
        return outcome
    collect(outcome, results)
    outcome.records = suite_records(suite)
    if outcome.records:
        write_results(outcome.records, suite.dir)
    return outcome


def collect(outcome: Any, results: list[JobResult]) -> None:
    for result in results:
        if result.status == "finished":
            outcome.finished.append(result.run_id)
        elif result.status == "skipped":
            outcome.skipped.append(result.run_id)
        elif result.status == "busy":
            outcome.busy.append(result.run_id)
            log.info("%s", result.reason)
        else:
            outcome.failed.append((result.run_id, result.reason))


def announce(result: JobResult) -> None:
    """The one console line per ended job."""
    if result.status == "finished":
        log.info("%s: finished (%s pid %d)", result.run_id, result.host, result.pid)
    elif result.status in ("skipped", "busy"):
        log.info("%s", result.reason)
    else:
        log.error("%s: %s: %s", result.run_id, result.status, result.reason)


def _backend(name: str) -> Any:
    if name == "local":
        from . import local as backend
    elif name == "ray":
        from . import ray as backend  # type: ignore[no-redef]
    elif name == "slurm":
        from . import slurm as backend  # type: ignore[no-redef]
    else:
        from . import serial as backend  # type: ignore[no-redef]
    return backend


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


__all__ = ["EXECUTORS", "ExecutorOptions", "check_options", "run_suite"]
