"""Executors: where the jobs of a suite run. One job = one (run, seed) run by :func:`job.run_job`.

=========  ====================================================================================
serial     in this process, one after another (the default)
local      ``--workers N`` spawned processes on this machine, each pinned to one GPU through
           ``CUDA_VISIBLE_DEVICES`` (or, without a GPU, the cores split: torch threads per worker)
ray        one Ray task per job (``num_gpus``/``num_cpus`` from the options); ``--address``
           joins a cluster, none starts a local Ray; a task whose process dies is retried
slurm      one submitit job array per invocation, a task per job; requeued on preemption/time-out
=========  ====================================================================================

Each is a backend object (:class:`base.Backend`: ``check`` before anything is written, ``run``
the jobs) made by :func:`backend` for one invocation; the one suite driver
(:func:`runs.driver.run_suite`) plans, hands the startable jobs to it and writes the suite outputs.
There is no scheduler here: the executors are multiprocessing, Ray and Slurm themselves.
"""

from __future__ import annotations

from .base import EXECUTORS, Backend, ExecutorOptions, absolute, announce, check_options, launcher
from .job import Job, JobResult, remove_probe, run_job, write_probe
from .local import LocalBackend
from .ray import RayBackend
from .serial import SerialBackend
from .slurm import SlurmBackend

BACKENDS: dict[str, type] = {"serial": SerialBackend, "local": LocalBackend, "ray": RayBackend,
                             "slurm": SlurmBackend}


def backend(options: ExecutorOptions, *, fail_fast: bool = False) -> Backend:
    """The backend object of ``options.executor`` for one invocation (options checked first)."""
    check_options(options)
    made: Backend = BACKENDS[options.executor](options, fail_fast=fail_fast)
    return made


__all__ = ["BACKENDS", "EXECUTORS", "Backend", "ExecutorOptions", "Job", "JobResult", "absolute", "announce",
           "backend", "check_options", "launcher", "remove_probe", "run_job", "write_probe"]
