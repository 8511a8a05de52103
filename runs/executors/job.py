"""One job = one (run, seed): take its lock, re-read its folder, run it with :class:`RunSession`.

Every executor runs :func:`run_job` (serial in process, local in a spawned process, Ray in a task,
Slurm in an array task), so folders, checkpoints, fingerprints and W&B ids are the same whichever
ran them. The job re-reads the folder *under the lock* (another invocation may have finished it since
the driver planned), checks its own machine (device, data, weights: a node may differ from the
login node) and the driver's probe file (the output folder must be the one the driver sees). A
failure of the run itself is reported in the result, never raised: executors retry only jobs whose
process died (node lost, OOM kill), and those resume from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RunConfig, SuiteConfig
from ..errors import RefusedError, RunFailed
from ..folders import RunFolder
from ..io import atomic_write_text, ensure_dir
from ..lock import RunLock, lock_path
from ..machine import check_machine
from ..runkey import RunKey
from ..session import RunSession

log = logging.getLogger("runs.executors")
PROBES = ".probes"  # <suite>/.probes/<token>: one file per invocation (concurrent ones do not clash)


@dataclass
class Job:
    """What a worker needs for one (run, seed): picklable, no open handles."""

    suite: SuiteConfig
    run: RunConfig
    seed: int
    action: str  # one of planning.STARTABLE
    probe: str = ""  # the driver's token: <suite>/.probes/<token> must exist here; "" = not checked
    online: bool = False
    verbose: bool = False
    threads: int | None = None  # torch.set_num_threads in the worker (None: leave torch's default)
    progress: bool = True  # progress bars; off under local/ray/slurm (the driver prints one line per run)
    machine_checked: bool = False  # the driver already ran machine.preflight on this machine (serial): skip it here
    cwd: str = field(default_factory=os.getcwd)  # relative data_root / output_dir are relative to it
    key: RunKey | None = None  # the planner's key (its config and fingerprint already computed); None: made here

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = RunKey.of(self.suite, self.run, self.seed)

    @property
    def run_id(self) -> str:
        assert self.key is not None
        return self.key.id


@dataclass
class JobResult:
    run_id: str
    status: str  # finished | failed | skipped (finished meanwhile) | busy (locked elsewhere) | refused
    reason: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    threads: int | None = None


def write_probe(suite: SuiteConfig) -> str:
    """Write ``<suite>/.probes/<token>`` with a fresh token; every job checks it sees that file."""
    token = secrets.token_hex(8)
    atomic_write_text(ensure_dir(suite.dir / PROBES) / token, token)
    return token


def remove_probe(suite: SuiteConfig, token: str) -> None:
    """Remove this invocation's probe once its jobs have ended."""
    (suite.dir / PROBES / token).unlink(missing_ok=True)


def check_probe(suite: SuiteConfig, token: str) -> str | None:
    """None when this machine sees the driver's probe; else the one-line problem."""
    if not token:
        return None
    path = suite.dir / PROBES / token
    try:
        seen: str | None = path.read_text().strip()
    except OSError:
        seen = None
    if seen == token:
        return None
    return (f"this machine ({socket.gethostname()}) does not see the output folder the driver wrote "
            f"({path.resolve()} {'is missing' if seen is None else 'holds another token'}); give --output-dir "
            f"a folder on a file system every worker shares")


def _enter(job: Job) -> int:
    if job.cwd and Path(job.cwd).is_dir():
        os.chdir(job.cwd)
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    return torch.get_num_threads()


def run_job(job: Job, on_prepared: Callable[[Path], None] | None = None) -> JobResult:
    """Run one (run, seed) under its lock; the outcome as a :class:`JobResult` (never raises RunFailed).

    ``on_prepared(folder)`` is called once the run folder exists (Slurm links its logs there).
    """
    key = job.key
    assert key is not None
    threads = _enter(job)
    result = JobResult(job.run_id, "failed", threads=threads)
    problem = check_probe(job.suite, job.probe)
    problems = [problem] if problem else [] if job.machine_checked else check_machine(job.run)
    if problems:
        result.reason = f"{job.run_id}: cannot start here: " + " | ".join(problems)
        return result
    lock = RunLock(lock_path(job.suite.dir, job.run_id))
    if not lock.acquire():
        result.status = "busy"
        result.reason = f"{job.run_id}: locked by {lock.holder.describe() if lock.holder else '?'}"
        return result
    try:
        folder = RunFolder(key.folder)
        state = key.state(None)
        replaces: dict | None = None
        if state.status == "finished":
            result.status = "skipped"
            result.reason = f"{job.run_id}: finished meanwhile by another worker"
            return result
        if state.status in ("failed", "changed"):
            if job.action != f"rerun-{state.status}":
                result.status = "refused" if state.status == "changed" else "failed"
                result.reason = f"{job.run_id}: {state.status} meanwhile (see {folder.path})"
                return result
            moved = folder.supersede((folder.meta() or {}).get("fingerprint", "nofingerprint"))
            if state.status == "changed":  # the table marks the new result as a --rerun-changed one
                replaces = {"superseded": str(moved), "changes": state.changes}
        log.info("%s: started on %s pid %d (%s torch threads)", job.run_id, result.host, result.pid, threads)
        session = RunSession(job.suite, job.run, job.seed, online=job.online, verbose=job.verbose,
                             progress=job.progress, key=key)
        session.replaces = replaces
        if on_prepared is not None:
            session.prepare()
            on_prepared(session.out)
        session.execute()
        result.status = "finished"
    except RunFailed as error:
        result.reason = str(error)
    except RefusedError as error:  # the folder's machine facts differ from this worker's
        result.status, result.reason = "refused", str(error)
    finally:
        lock.release()
    return result

