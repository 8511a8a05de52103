"""One (run, seed)'s identity: its id, folder, resolved config and fingerprint, computed once.

Every module that needs ``<run>-seed<k>``, ``<output_dir>/<suite>/<run>-seed<k>/``, the resolved
config (what ``config.yaml`` holds) or the fingerprint (:mod:`runs.fingerprint`) reads them from a
:class:`RunKey`; the planner makes one per selected (run, seed) and hands it on to the job and the
session, so the config is resolved and hashed once per invocation (a key pickled to a worker
carries its computed values along).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .config import RunConfig, SuiteConfig, to_plain
from .fingerprint import fingerprint, fingerprinted


def run_id(name: str, seed: int) -> str:
    """``<run>-seed<k>``: the folder name, the lock name and the W&B run name of one (run, seed)."""
    return f"{name}-seed{seed}"


def run_config(run: RunConfig, seed: int) -> dict[str, Any]:
    """The declared resolved config of one (run, seed) as plain data (what ``config.yaml`` holds)."""
    return to_plain(run) | {"seed": seed}


def run_dir(suite: SuiteConfig, run: RunConfig, seed: int) -> Path:
    """``<output_dir>/<suite>/<run>-seed<k>``."""
    return suite.dir / run_id(run.name, seed)


@dataclass(frozen=True, eq=False)
class RunKey:
    """A (run, seed) of a suite whose output folder is ``suite_dir``.

    ``config``, ``fingerprinted`` and ``fingerprint`` are computed on first use and kept; the run
    config must not be edited after that (suites are loaded, then run).
    """

    suite_dir: Path
    run: RunConfig
    seed: int

    @classmethod
    def of(cls, suite: SuiteConfig, run: RunConfig, seed: int) -> RunKey:
        return cls(suite.dir, run, seed)

    @property
    def id(self) -> str:
        return run_id(self.run.name, self.seed)

    @property
    def folder(self) -> Path:
        return self.suite_dir / self.id

    @cached_property
    def config(self) -> dict[str, Any]:
        return run_config(self.run, self.seed)

    @cached_property
    def fingerprinted(self) -> dict[str, Any]:
        """The config without the paths :data:`runs.fingerprint.NOT_FINGERPRINTED` lists."""
        return fingerprinted(self.config)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.config)


def keys_of(suite: SuiteConfig, only: list[str] | None = None) -> list[RunKey]:
    """Every selected (run, seed) of ``suite`` in suite order (runs, then their seeds)."""
    return [RunKey.of(suite, run, seed) for run in suite.runs if not only or run.name in only for seed in run.seeds]


__all__ = ["RunKey", "keys_of", "run_config", "run_dir", "run_id"]
