"""``--executor slurm``: one submitit job array per invocation, one task per (run, seed)
(``pip install -e ".[slurm]"``).

Options come from the suite's ``launcher:`` block (:class:`runs.config.LauncherConfig`) with the
command line's ``--partition --time --gpus-per-run --cpus-per-run --mem --account`` on top; extra
``sbatch`` options from ``launcher.sbatch``. The generated script carries ``--requeue`` and
submitit's ``--signal=USR2@90``: on preemption or time-out submitit's checkpoint hook
(:class:`SlurmTask` is a ``submitit.helpers.Checkpointable``) requeues the task, which resumes from
its last checkpoint in the same folder under the same W&B id (``max_requeues`` time-outs at most).
The task runs no SIGTERM handler of the project's, so submitit's signals stay its own.

submitit's files (pickles, ``%A_%a`` logs) go to ``<suite>/.slurm/``; each task links its
scheduler stdout/stderr into its run folder as ``slurm-<job id>.out`` / ``.err``, beside ``log.txt``.
``RUNS_SLURM_CLUSTER=local`` (or ``debug``) uses submitit's local executor instead of Slurm: what
the tests do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ConfigError, LauncherConfig, SuiteConfig, slurm_minutes
from ..io import atomic_write_text, ensure_dir
from ..planning import Planned
from .base import ExecutorOptions, announce, launcher
from .job import Job, JobResult, run_job

log = logging.getLogger("runs.executors")
CLUSTER_ENV = "RUNS_SLURM_CLUSTER"


def _cluster() -> str:
    return os.environ.get(CLUSTER_ENV, "slurm")


def _link_logs(folder: Path) -> None:
    """Link this task's scheduler stdout/stderr into its run folder (beside log.txt)."""
    import submitit  # the optional extra (pip install -e ".[slurm]")

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        return
    for kind, source in (("out", env.paths.stdout), ("err", env.paths.stderr)):
        link = folder / f"slurm-{env.job_id}.{kind}"
        if not link.is_symlink() and not link.exists():
            try:
                link.symlink_to(Path(source).resolve())
            except OSError as error:
                log.warning("%s: cannot link the scheduler log: %s", folder.name, error)


def _task_class() -> type:
    import submitit  # the optional extra

    class SlurmTask(submitit.helpers.Checkpointable):
        """One array task; ``checkpoint`` (inherited) requeues it with the same job on preemption."""

        def __call__(self, job: Job) -> JobResult:
            for name in ("runs", "strategies", "benchmarks"):
                logging.getLogger(name).setLevel(logging.INFO)
            return run_job(job, on_prepared=_link_logs)

    return SlurmTask


def parameters(cfg: LauncherConfig, jobs: list[Job], name: str) -> dict[str, Any]:
    """submitit parameters of the array for ``cfg`` (time in minutes, GPUs per task, extra sbatch)."""
    gpus = cfg.gpus_per_run if cfg.gpus_per_run is not None else int(any(j.run.train.device != "cpu" for j in jobs))
    params: dict[str, Any] = {
        "name": f"runs-{name}", "timeout_min": slurm_minutes(cfg.time), "cpus_per_task": cfg.cpus_per_run,
        "tasks_per_node": 1, "nodes": 1,
        "slurm_additional_parameters": {"requeue": True, **cfg.sbatch},
        "slurm_array_parallelism": cfg.max_parallel or len(jobs),
    }
    if gpus:
        params["slurm_gres"] = f"gpu:{gpus}"
    for key in ("partition", "mem", "account"):
        if getattr(cfg, key) is not None:
            params[f"slurm_{key}"] = getattr(cfg, key)
    if cfg.setup:
        params["slurm_setup"] = list(cfg.setup)
    return params


class SlurmBackend:
    on_this_machine = False
    in_process = False
    job_fields: dict[str, Any] = {"progress": False}

    def __init__(self, options: ExecutorOptions, *, fail_fast: bool = False) -> None:
        self.options = options

    def check(self, suite: SuiteConfig, planned: list[Planned]) -> None:
        cluster = _cluster()
        if cluster not in ("slurm", "local", "debug"):
            raise ConfigError(f"{CLUSTER_ENV}={cluster!r}: choose slurm, local or debug")
        if cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
            raise ConfigError("--executor slurm: no `sbatch`/`srun` on PATH; submit from a Slurm login node "
                              f"(or set {CLUSTER_ENV}=local to try submitit's local executor)")
        launcher(suite, self.options)  # bad --time etc.: exit 2 now

    def run(self, suite: SuiteConfig, jobs: list[Job]) -> list[JobResult] | None:
        return run(suite, jobs, self.options)


def run(suite: SuiteConfig, jobs: list[Job], options: ExecutorOptions) -> list[JobResult] | None:
    """Submit the jobs as one array; follow them (their results) unless ``--no-wait`` (None)."""
    import submitit  # the optional extra

    cfg = launcher(suite, options)
    folder = ensure_dir(suite.dir / ".slurm")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=_cluster(), slurm_max_num_timeout=cfg.max_requeues,
                                     local_max_num_timeout=cfg.max_requeues)
    params = parameters(cfg, jobs, suite.name)
    if _cluster() != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    task = _task_class()()
    with executor.batch():
        submitted = [executor.submit(task, replace(job, threads=cfg.cpus_per_run))
                     for job in jobs]
    by_id = {s.job_id: job for s, job in zip(submitted, jobs, strict=True)}
    atomic_write_text(folder / "array.json", json.dumps({s.job_id: j.run_id for s, j in zip(submitted, jobs,
                                                                                            strict=True)}, indent=2))
    for s, job in zip(submitted, jobs, strict=True):
        log.info("%s: submitted as Slurm job %s", job.run_id, s.job_id)
    if not options.wait:
        return None
    results = []
    for done in submitit.helpers.as_completed(submitted):
        job = by_id[done.job_id]
        try:
            result = done.result()
        except Exception as error:  # the task died / was cancelled / timed out more than max_requeues
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            result = JobResult(job.run_id, "failed", f"{job.run_id}: Slurm job {done.job_id} ended without a "
                                                     f"result ({reason}); log: {done.paths.stderr}")
        announce(result)
        results.append(result)
    return results
