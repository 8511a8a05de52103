"""``--executor serial`` through the driver: every job in this process, one after another.

``python -m runs run`` without ``--executor`` uses :func:`runs.runner.run_suite`, which does the same
with ``--fail-fast``; this module is the driver's form (same jobs, same locks), e.g. for tests.
"""

from __future__ import annotations

from typing import Any

from . import ExecutorOptions, announce
from .job import Job, JobResult, run_job


def check(suite: Any, options: ExecutorOptions, planned: list[Any]) -> None:
    """Nothing beyond the driver's checks."""


def run(jobs: list[Job], options: ExecutorOptions) -> list[JobResult]:
    results = []
    for job in jobs:
        results.append(run_job(job))
        announce(results[-1])
    return results
