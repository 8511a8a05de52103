"""The one suite driver: ``python -m runs run`` under every executor.

Order of work in :func:`run_suite`, the same for serial, local, Ray and Slurm:

1. plan: decide every selected run's state from its folder and refuse changed ones unless asked to
   re-run them (:mod:`runs.planning`); refuse ``--rerun-*`` on folders a live worker holds;
2. check: the machine facts of every run that will start when its job runs on this machine
   (:mod:`runs.machine`), then the backend's own checks (GPU count, cluster address, ``--time``)
   — so a refusal or a missing dataset stops the suite before anything ran (exit 2);
3. write ``.probes/<token>`` (every job checks it sees the driver's output folder) and ``.plan.json``
   (:mod:`runs.status`), account the runs skipped as finished / failed earlier;
4. hand the startable jobs to the backend (:mod:`runs.executors`); a run that raises is marked
   failed and the suite goes on (``--fail-fast`` stops a serial suite);
5. write the suite outputs (:func:`write_suite_outputs`): ``results.md`` / ``.csv`` / plots with rows
   in suite order and the suite-level W&B run (``suite_run.json``). With ``--no-wait`` they are
   left to the next ``run`` or ``report`` (``.plan.json`` marks them pending).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SuiteConfig
from .executors import ExecutorOptions, Job, JobResult, absolute, backend, remove_probe, write_probe
from .folders import refuse_symlink
from .machine import preflight
from .planning import STARTABLE, Planned, plan, refuse_locked
from .report import load_run_records, write_results
from .runkey import RunKey, keys_of
from .share import log_suite_run
from .status import read_plan, set_outputs_pending, write_plan

log = logging.getLogger(__name__)


@dataclass
class SuiteOutcome:
    """What a suite invocation did; ``exit_code`` follows the exit-code table of ``python -m runs --help``."""

    records: list[dict[str, Any]] = field(default_factory=list)  # the suite table's records
    finished: list[str] = field(default_factory=list)  # run ids finished by this invocation
    skipped: list[str] = field(default_factory=list)  # finished earlier
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, reason with log path)
    busy: list[str] = field(default_factory=list)  # locked by a live worker of another invocation: skipped
    submitted: bool = False  # --no-wait: jobs handed to the scheduler, not followed

    @property
    def exit_code(self) -> int:
        """0 only when every selected run is finished: a failed run or one skipped because a live
        worker of another invocation holds its lock (``busy``) gives 1; ``--no-wait`` gives 0 once
        submitted (docs/validation.md#exit-codes)."""
        if self.submitted:
            return 0
        return 1 if self.failed or self.busy else 0


def run_suite(suite: SuiteConfig, options: ExecutorOptions | None = None, **kwargs: Any) -> SuiteOutcome:
    """:func:`_run_suite` with ``HF_HUB_OFFLINE=1`` while it runs when no run needs the hub
    (:func:`offline_hub_default`); the variable is restored afterwards."""
    before = os.environ.get("HF_HUB_OFFLINE")
    offline_hub_default(suite)
    try:
        return _run_suite(suite, options, **kwargs)
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _run_suite(suite: SuiteConfig, options: ExecutorOptions | None = None, *, online: bool = False,
               only: list[str] | None = None, rerun_changed: bool = False, rerun_failed: bool = False,
               fail_fast: bool = False, verbose: bool = False) -> SuiteOutcome:
    """Run every selected (run, seed) not finished yet with ``options.executor`` (default: serial),
    then write the suite outputs.

    Refusals and machine problems raise before any work (:class:`runs.errors.RefusedError`,
    :class:`runs.errors.MachineError`, :class:`runs.config.ConfigError`); a failing run is marked and
    the others go on unless ``fail_fast``.
    """
    options = options or ExecutorOptions()
    runner = backend(options, fail_fast=fail_fast)
    if not runner.in_process:
        suite = absolute(suite)  # workers may start in another directory
    for key in keys_of(suite, only):
        refuse_symlink(key.folder)  # before anything reads or writes through it (exit 2)
    planned = plan(suite, only, rerun_changed=rerun_changed, rerun_failed=rerun_failed,
                   compare_machine=runner.on_this_machine)
    refuse_locked(suite, planned)
    if runner.on_this_machine:
        preflight(suite, planned)
    runner.check(suite, planned)  # e.g. GPU count, Ray address: before anything is written
    mode = "online" if online else suite.wandb.mode
    pending = bool((read_plan(suite.dir) or {}).get("outputs_pending"))  # left by a --no-wait invocation
    probe = write_probe(suite)
    write_plan(suite, only, keys=[p.key for p in planned], mode=mode, pending=pending or not options.wait)
    outcome = SuiteOutcome()
    account_skips(outcome, planned)
    jobs = [Job(suite, p.run, p.seed, p.action, probe=probe, online=online, verbose=verbose, key=p.key,
                **runner.job_fields) for p in planned if p.action in STARTABLE]
    try:
        results = runner.run(suite, jobs) if jobs else []
    finally:
        if options.wait:
            remove_probe(suite, probe)
    if results is None:  # submitted, not followed (--no-wait): the jobs check the probe later
        outcome.submitted = True
        return outcome
    collect(outcome, results)
    outcome.records = suite_records(suite)
    if outcome.records:
        write_suite_outputs(suite.dir, outcome.records, suite=suite.name, order=[r.name for r in suite.runs],
                            wandb=dataclasses.asdict(suite.wandb), mode=mode,
                            log_run=bool(outcome.finished or outcome.failed or pending))
    return outcome


def offline_hub_default(suite: SuiteConfig) -> bool:
    """``HF_HUB_OFFLINE=1`` (unless set) when no run needs the Hugging Face hub: every run's weights are
    ``none`` (random init) or a local file. Workers inherit it; docs/quickstart.md (offline use)."""
    local = all(str(run.model.pretrained) in ("none", "") or Path(str(run.model.pretrained)).is_file()
                for run in suite.runs)
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return local


def account_skips(outcome: SuiteOutcome, planned: list[Planned]) -> None:
    """Runs finished earlier are skipped; runs failed earlier are listed as failed (exit 1)."""
    for item in planned:
        if item.action == "skip-finished":
            log.info("%s: finished earlier with the same config, skipped", item.key.id)
            outcome.skipped.append(item.key.id)
        elif item.action == "skip-failed":
            reason = (item.state.record or {}).get("reason", "?")
            outcome.failed.append((item.key.id, f"failed earlier: {reason} (log: {item.key.folder / 'log.txt'}; "
                                                f"--rerun-failed restarts it)"))


def collect(outcome: SuiteOutcome, results: list[JobResult]) -> None:
    for result in results:
        if result.status == "finished":
            outcome.finished.append(result.run_id)
        elif result.status == "skipped":
            outcome.skipped.append(result.run_id)
        elif result.status == "busy":
            outcome.busy.append(result.run_id)
            log.info("%s", result.reason)
        else:
            outcome.failed.append((result.run_id, result.reason))


def suite_records(suite: SuiteConfig, keys: list[RunKey] | None = None) -> list[dict[str, Any]]:
    """The live records of the suite's (run, seed)s that hold the suite's runs (``RunKey.owns``): each
    once, in suite order, each with the ``reference`` its run names in the suite now (not fingerprinted:
    one added to a finished run is read from the suite, not from the old folder)."""
    keys = keys if keys is not None else keys_of(suite)
    by_id = {key.id: key for key in keys}
    order = {key.id: i for i, key in enumerate(keys)}
    records = [r for r in load_records(suite.dir) if r.get("run_id") in by_id and by_id[r["run_id"]].owns(r)]
    for record in records:
        record["reference"] = by_id[record["run_id"]].run.reference
    return sorted(records, key=lambda r: order[r["run_id"]])


def write_suite_outputs(suite_dir: Path, records: list[dict[str, Any]], *, suite: str, order: Sequence[str] | None,
                        wandb: dict[str, Any], mode: str, log_run: bool) -> dict[str, Path]:
    """``results.md`` / ``.csv``, ``runs.csv``, plots (rows in ``order``) and, when ``log_run`` and W&B
    is not disabled, the suite-level W&B run (``suite_run.json``); clears the pending mark."""
    paths = write_results(records, suite_dir, suite=suite, run_order=order)
    if mode != "disabled" and log_run:
        log_suite_run(suite_dir, records, wandb, mode, suite=suite, run_order=order)
    set_outputs_pending(suite_dir, False)
    return paths


def load_records(suite_dir: Path, damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """The suite folder's readable records; a damaged one is named in a warning (and in ``damaged``)
    and left out: the other runs and the table are unaffected (docs/reliability.md)."""
    found: list[str] = []
    records = load_run_records(suite_dir, damaged=found)
    for line in found:
        log.warning("damaged run record, left out of the table: %s", line)
    if damaged is not None:
        damaged.extend(found)
    return records


def report_suite(suite_dir: Path, damaged: list[str] | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, Path], list[str] | None]:
    """``python -m runs report``: rebuild the suite outputs from the run folders (records, written
    files, run order). The run order and W&B block come from ``.plan.json`` when present; the
    suite-level W&B run is logged when a ``--no-wait`` invocation left it pending. Damaged records
    are left out and listed in ``damaged``."""
    records = load_records(suite_dir, damaged)
    plan_file = read_plan(suite_dir) or {}
    order = plan_file.get("order")
    suite_references = plan_file.get("references") or {}
    for record in records:  # the reference the suite names now (not fingerprinted: the folder's may be stale)
        if record.get("name") in suite_references:
            record["reference"] = suite_references[record["name"]]
    if not records:
        return records, {}, order
    wandb = {k: v for k, v in (plan_file.get("wandb") or {}).items() if k != "mode"}
    paths = write_suite_outputs(suite_dir, records, suite=plan_file.get("suite") or Path(suite_dir).name,
                                order=order, wandb=wandb, mode=plan_file.get("mode", "disabled"),
                                log_run=bool(plan_file.get("outputs_pending")))
    return records, paths, order


__all__ = ["SuiteOutcome", "report_suite", "run_suite", "suite_records", "write_suite_outputs"]
