"""``--executor serial`` (the default): every job in this process, one after another.

The jobs run in the driver's process and working directory, with progress bars, after the driver's
machine check (``machine_checked``); ``--fail-fast`` stops at the first failed run.
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import SuiteConfig
from ..planning import Planned
from .base import ExecutorOptions
from .job import Job, JobResult, run_job

log = logging.getLogger("runs.executors")


class SerialBackend:
    on_this_machine = True
    in_process = True
    job_fields: dict[str, Any] = {"cwd": "", "machine_checked": True}

    def __init__(self, options: ExecutorOptions, *, fail_fast: bool = False) -> None:
        self.options, self.fail_fast = options, fail_fast

    def check(self, suite: SuiteConfig, planned: list[Planned]) -> None:
        """Nothing beyond the driver's checks."""

    def run(self, suite: SuiteConfig, jobs: list[Job]) -> list[JobResult]:
        results = []
        for job in jobs:
            log.info("=== %s: %s on %s ===", job.run_id, job.run.method.name if job.run.method else "?",
                     job.run.stream.name if job.run.stream else "?")
            # under the run's lock; supersedes for --rerun-*; a run locked by a live worker is skipped
            results.append(run_job(job))
            if results[-1].status in ("failed", "refused"):
                log.error("%s", results[-1].reason)
                if self.fail_fast:
                    break
        return results
