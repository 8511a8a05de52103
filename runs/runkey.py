"""One (run, seed)'s identity: its id, folder, resolved config and fingerprint, computed once.

Every module that needs ``<run>-seed<k>``, ``<output_dir>/<suite>/<run>-seed<k>/``, the resolved
config (what ``config.yaml`` holds) or the fingerprint (:mod:`runs.fingerprint`) reads them from a
:class:`RunKey`; the planner makes one per selected (run, seed) and hands it on to the job and the
session, so the config is resolved and hashed once per invocation (a key pickled to a worker
carries its computed values along).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from strategies.registry import METHODS, SECTIONS

from .config import Choice, RunConfig, SuiteConfig, to_plain
from .fingerprint import differences, fingerprint, fingerprinted, flatten
from .folders import FolderState, RunFolder


def run_id(name: str, seed: int) -> str:
    """``<run>-seed<k>``: the folder name, the lock name and the W&B run name of one (run, seed)."""
    return f"{name}-seed{seed}"


def run_config(run: RunConfig, seed: int) -> dict[str, Any]:
    """The declared resolved config of one (run, seed) as plain data (what ``config.yaml`` holds)."""
    return to_plain(run) | {"seed": seed}


def reads_of(run: RunConfig) -> tuple[str, ...]:
    """The config parts the run's method reads (``MethodSpec.reads``; every section without a method)."""
    spec = METHODS.get(run.method.name) if run.method is not None else None
    return tuple(spec.reads) if spec is not None else SECTIONS


def field_defaults(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> default value of every leaf field of a run's config tree (:func:`flatten` form),
    following the run's own nested dataclasses and method / stream option classes."""
    if isinstance(obj, Choice):
        return field_defaults(obj.cfg, prefix)
    out: dict[str, Any] = {}
    if not dataclasses.is_dataclass(obj):
        return out
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Choice) or dataclasses.is_dataclass(value):
            out.update(field_defaults(value, f"{prefix}{f.name}."))
        elif f.default is not dataclasses.MISSING:
            out.update(flatten({f.name: to_plain(f.default)}, prefix))
        elif f.default_factory is not dataclasses.MISSING:
            out.update(flatten({f.name: to_plain(f.default_factory())}, prefix))
    return out


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

    @property
    def reads(self) -> tuple[str, ...]:
        """The config parts the fingerprint covers besides ``seed`` (the method's ``MethodSpec.reads``)."""
        return reads_of(self.run)

    @cached_property
    def fingerprinted(self) -> dict[str, Any]:
        """The config parts the method reads, and the seed, without the paths
        :data:`runs.fingerprint.NOT_FINGERPRINTED` lists."""
        return fingerprinted(self.config, self.reads)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.config, self.reads)

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """Dotted path -> default of every field of this run's config (what an absent field means)."""
        return field_defaults(self.run)

    def state(self, machine: dict[str, str] | None) -> FolderState:
        """This run's folder state (:meth:`runs.folders.RunFolder.state`; ``machine`` None: not compared)."""
        return RunFolder(self.folder).state(self.fingerprint, self.fingerprinted, machine, self.differences)

    def owns(self, record: dict[str, Any]) -> bool:
        """Does ``record`` (the ``metrics.json`` / ``failed.json`` of this run's folder) hold this run's
        results — written under its fingerprint, or under an older format the folder still matches?"""
        if record.get("run_id") != self.id:
            return False
        if record.get("fingerprint") == self.fingerprint:
            return True
        meta = RunFolder(self.folder).meta()
        return (meta is not None and meta.get("fingerprint") == record.get("fingerprint")
                and not self.differences(meta.get("config", {})))

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Changes from a folder's stored fingerprinted config (any fingerprint format) to this run's;
        empty: the folder holds this run (:func:`runs.fingerprint.differences`)."""
        return differences(stored, self.fingerprinted, self.reads, self.defaults)


def keys_of(suite: SuiteConfig, only: list[str] | None = None) -> list[RunKey]:
    """Every selected (run, seed) of ``suite`` in suite order (runs, then their seeds)."""
    return [RunKey.of(suite, run, seed) for run in suite.runs if not only or run.name in only for seed in run.seeds]


__all__ = ["RunKey", "keys_of", "run_config", "run_dir", "run_id"]
