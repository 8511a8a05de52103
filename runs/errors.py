"""The errors of running a suite: refusals and machine problems (exit 2, nothing ran) and a failed run.

Exit codes: the table of ``python -m runs --help``.
"""

from __future__ import annotations

from .config import ConfigError


class RefusedError(ConfigError):
    """Runs whose folders hold results of another config (exit 2, nothing ran)."""


class MachineError(ConfigError):
    """A run cannot start on this machine: device absent, data or weights unavailable (exit 2)."""


class RunFailed(RuntimeError):
    """The run raised; ``failed.json`` and ``log.txt`` in its folder say why."""


__all__ = ["MachineError", "RefusedError", "RunFailed"]
