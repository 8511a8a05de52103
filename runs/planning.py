"""What a ``run`` invocation will do with each selected (run, seed), decided from its folder alone.

:func:`plan` reads every selected run folder (:mod:`runs.folders`) and maps its state to an action;
changed runs are refused (exit 2, nothing ran) unless ``--rerun-changed``. :func:`refuse_locked`
refuses ``--rerun-*`` on a folder a live worker holds (:mod:`runs.lock`). Both run before anything
is written, for every executor.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies.training import resolve_device

from .config import RunConfig, SuiteConfig
from .errors import RefusedError
from .fingerprint import machine_facts
from .folders import FolderState
from .lock import live_holder
from .runkey import RunKey, keys_of

STARTABLE = ("run", "resume", "rerun-failed", "rerun-changed")  # the actions that start a job
_ACTION = {"new": "run", "resumable": "resume", "finished": "skip-finished"}


@dataclass
class Planned:
    key: RunKey
    state: FolderState
    action: str  # run | resume | skip-finished | skip-failed | rerun-failed | rerun-changed | refuse

    @property
    def run(self) -> RunConfig:
        return self.key.run

    @property
    def seed(self) -> int:
        return self.key.seed


def _action(status: str, rerun_changed: bool, rerun_failed: bool) -> str:
    if status == "failed":
        return "rerun-failed" if rerun_failed else "skip-failed"
    if status == "changed":
        return "rerun-changed" if rerun_changed else "refuse"
    return _ACTION[status]


def plan(suite: SuiteConfig, only: list[str] | None = None, *, rerun_changed: bool = False,
         rerun_failed: bool = False, compare_machine: bool = True) -> list[Planned]:
    """Every selected (run, seed) with its folder state and what to do; refuses changed runs.

    ``compare_machine``: compare the folders' machine facts with this machine's (the executors whose
    jobs run here); a cluster's jobs compare them on their node.
    """
    planned, refusals = [], []
    for key in keys_of(suite, only):
        facts = machine_facts(key.run.train, resolve_device(key.run.train.device)) if compare_machine else None
        state = key.state(facts)
        action = _action(state.status, rerun_changed, rerun_failed)
        if action == "refuse":
            refusals.append(f"{key.id}: " + "; ".join(state.changes))
        planned.append(Planned(key, state, action))
    if refusals:
        raise RefusedError(
            "these runs' folders hold results of another config (nothing ran): " + " | ".join(refusals)
            + ". Re-run them with --rerun-changed (the old folders move to .superseded/), give the changed "
              "run its own name, or use another --output-dir")
    return planned


def refuse_locked(suite: SuiteConfig, planned: list[Planned]) -> None:
    """--rerun-changed / --rerun-failed never move a folder a live worker holds (:mod:`runs.lock`)."""
    held = [f"{p.key.id} ({info.describe()})" for p in planned
            if p.action in ("rerun-failed", "rerun-changed")
            and (info := live_holder(suite.dir, p.key.id)) is not None]
    if held:
        raise RefusedError(f"--rerun-changed / --rerun-failed: these runs are locked by a running worker "
                           f"(nothing ran): {', '.join(held)}; wait for it to end or stop it first")


__all__ = ["STARTABLE", "Planned", "plan", "refuse_locked"]
