"""runs status: the state of each (run, seed) from its folder and lock; refusals around locks."""

from __future__ import annotations

import json
import time

import pytest

from runs.__main__ import main
from runs.config import load_suite
from runs.executors.job import Job, run_job
from runs.folders import RunFolder
from runs.lock import RunLock, lock_path
from runs.runkey import RunKey
from runs.runner import RefusedError, plan, refuse_locked, run_dir
from runs.status import format_status, suite_status, write_plan

SMOKE = "runs/suites/smoke.yaml"


@pytest.fixture
def suite(tmp_path):
    return load_suite(SMOKE, output_dir=str(tmp_path))


def _folder(suite, name: str, *, result: str | None = None, config_change: bool = False) -> RunFolder:
    run = next(r for r in suite.runs if r.name == name)
    key = RunKey.of(suite, run, 0)  # the folder as the runner writes it (fingerprint over what the method reads)
    fp = key.fingerprint if not config_change else "0123456789ab"
    stored = key.fingerprinted | ({"model": key.fingerprinted["model"] | {"arch": "x"}} if config_change else {})
    folder = RunFolder(run_dir(suite, run, 0))
    folder.create(suite.name, f"{name}-seed0", fp, stored, {"device_type": "cpu", "precision": "fp32"})
    if result == "finished":
        (folder.path / "metrics.json").write_text(json.dumps({"status": "finished", "wall_time_s": 12.4}))
    elif result == "failed":
        (folder.path / "failed.json").write_text(json.dumps({"status": "failed", "reason": "ValueError: bad"}))
    elif result == "progress":
        (folder.path / "log.txt").write_text("x INFO runs.runner: naive-seed0  exp 1/5  acc_seen 50.0  (3 s)\n")
    return folder


def test_every_state_from_folders_and_locks(suite, tmp_path):
    _folder(suite, "naive", result="finished")
    _folder(suite, "lwf", result="failed")
    _folder(suite, "ewc", result="progress")
    _folder(suite, "replay", config_change=True)
    lock = RunLock(lock_path(suite.dir, "ewc-seed0"))
    assert lock.acquire()
    try:
        suite_dir, rows = suite_status(SMOKE, output_dir=str(tmp_path))
    finally:
        lock.release()
    states = {r.run_id: (r.state, r.detail) for r in rows}
    assert suite_dir == suite.dir
    assert states["zeroshot-seed0"] == ("pending", "not started")
    assert states["naive-seed0"] == ("finished", "12 s")
    assert states["lwf-seed0"] == ("failed", "ValueError: bad")
    assert states["ewc-seed0"][0] == "running" and "exp 1/5 done" in states["ewc-seed0"][1]
    assert states["replay-seed0"][0] == "changed"
    # the lock released: in progress, not running
    rows = suite_status(SMOKE, output_dir=str(tmp_path))[1]
    ewc = next(r for r in rows if r.run_id == "ewc-seed0")
    assert ewc.state == "pending" and "resumes on the next run" in ewc.detail
    text = format_status(suite.dir, rows)
    pending = len(suite.runs) - 3  # all but the finished, failed and changed runs (ewc pending again)
    assert f"1 finished, 1 failed, {pending} pending, 1 changed" in text


def test_status_of_an_output_folder_uses_the_plan_file(suite, tmp_path, capsys):
    write_plan(suite, ["naive", "lwf"])
    _folder(suite, "naive", result="finished")
    assert main(["status", str(suite.dir)]) == 0
    out = capsys.readouterr().out
    assert "naive-seed0" in out and "finished" in out and "lwf-seed0" in out and "not started" in out
    assert "ewc-seed0" not in out  # not selected by that invocation


def test_status_of_a_missing_folder_is_one_message(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "neither a suite YAML nor a suite output folder" in capsys.readouterr().err


def test_stale_lock_is_named_in_status(suite, tmp_path):
    _folder(suite, "naive", result="progress")
    path = lock_path(suite.dir, "naive-seed0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "gone", "pid": 7, "start": 0, "heartbeat": time.time() - 3600, "token": "t"}))
    row = next(r for r in suite_status(SMOKE, output_dir=str(tmp_path))[1] if r.run_id == "naive-seed0")
    assert row.state == "pending" and "stale lock" in row.detail


def test_rerun_failed_refuses_a_locked_folder(suite):
    _folder(suite, "lwf", result="failed")
    lock = RunLock(lock_path(suite.dir, "lwf-seed0"))
    assert lock.acquire()
    try:
        planned = plan(suite, ["lwf"], rerun_failed=True, compare_machine=False)
        with pytest.raises(RefusedError, match="locked by a running worker.*lwf-seed0"):
            refuse_locked(suite, planned)
    finally:
        lock.release()
    refuse_locked(suite, plan(suite, ["lwf"], rerun_failed=True, compare_machine=False))  # free: no refusal


def test_a_job_whose_run_is_locked_is_skipped_as_busy(suite):
    run = next(r for r in suite.runs if r.name == "naive")
    lock = RunLock(lock_path(suite.dir, "naive-seed0"))
    assert lock.acquire()
    try:
        result = run_job(Job(suite, run, 0, "run", cwd=""))
    finally:
        lock.release()
    assert result.status == "busy" and "locked by" in result.reason
    assert not run_dir(suite, run, 0).exists()  # nothing ran
