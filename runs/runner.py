"""The names users and tests import from ``runs.runner``, kept for them (the code lives elsewhere).

One run × seed: :mod:`runs.session`; its identity: :mod:`runs.runkey`; planning:
:mod:`runs.planning`; machine checks: :mod:`runs.machine`; the one suite driver for every executor:
:mod:`runs.driver`.
"""

from __future__ import annotations

from .driver import SuiteOutcome, run_suite, suite_records
from .errors import MachineError, RefusedError, RunFailed
from .machine import check_machine, preflight
from .planning import Planned, plan, refuse_locked
from .runkey import RunKey, run_config, run_dir
from .session import RunSession, accuracy_row, build_benchmark, running_transfer, set_seed

__all__ = ["MachineError", "Planned", "RefusedError", "RunFailed", "RunKey", "RunSession", "SuiteOutcome",
           "accuracy_row", "build_benchmark", "check_machine", "plan", "preflight", "refuse_locked",
           "run_config", "run_dir", "run_suite", "running_transfer", "set_seed", "suite_records"]
