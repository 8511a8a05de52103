"""[faults] issue 21, the rest: damaged side files in the report, two drivers on one output folder,
environments that refuse (W&B host unreachable, read-only output folder, full disk during a checkpoint),
damaged data named. Tiny in-process suites (2 experiences, 4 classes) unless a second process is the point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_results import _folder, write_suite

from runs.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


# ---- item 3: a damaged side file leaves the other runs and the table alone -------------------------
def test_a_damaged_config_yaml_of_a_finished_run_is_named_and_the_table_is_rebuilt(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    (_folder(tmp_path) / "config.yaml").write_text("a: [\n")
    (tmp_path / "out" / "tiny" / "results.md").unlink()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out" / "tiny")]) == 0
    captured = capsys.readouterr()
    assert "| naive |" in captured.out and "Traceback" not in captured.err
    assert "naive-seed0/config.yaml: unreadable run config" in captured.err
    assert "| naive |" in (tmp_path / "out" / "tiny" / "results.md").read_text()
    assert main(["run", str(path)]) == 0  # the suite table of `run` too


def test_a_failed_json_holding_an_empty_object_is_named_and_left_out_of_the_table(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    folder = _folder(tmp_path)
    (folder / "metrics.json").unlink()
    (folder / "failed.json").write_text(json.dumps({}))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out" / "tiny")]) == 1  # something is damaged: named, exit 1
    captured = capsys.readouterr()
    assert "| zeroshot |" in captured.out and "| naive |" not in captured.out
    assert "naive-seed0/failed.json: run record lacks run_id, name" in captured.err
    assert "Traceback" not in captured.err
    assert main(["status", str(path)]) == 0
    assert main(["run", str(path)]) == 1  # failed earlier (its failed.json says so), the table still written
    assert "Traceback" not in capsys.readouterr().err


# ---- item 5: two drivers on one output folder ----------------------------------------------------------
def test_two_local_drivers_started_together_on_one_suite_both_succeed(tmp_path, capsys):
    """Each driver writes its own probe (``.probes/<token>``, commit eb60932): neither fails the other's
    runs; the run neither selected is pending (not started), never failed."""
    path = write_suite(tmp_path, extra="  - {method: naive, name: other}\n")
    procs = {only: subprocess.Popen([sys.executable, "-m", "runs", "run", str(path), "--only", only,
                                     "--executor", "local", "--workers", "1"], cwd=ROOT, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for only in ("zeroshot", "naive")}
    outputs = {only: proc.communicate(timeout=600)[0] for only, proc in procs.items()}
    for only, proc in procs.items():
        assert proc.returncode == 0, outputs[only][-3000:]
        assert "does not see the output folder" not in outputs[only]
    suite_dir = tmp_path / "out" / "tiny"
    assert not list(suite_dir.glob("*/failed.json"))
    assert all((suite_dir / f"{run}-seed0" / "metrics.json").is_file() for run in ("zeroshot", "naive"))
    assert list((suite_dir / ".probes").iterdir()) == []  # each driver removed its own probe
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "other-seed0" in out and "pending   not started" in out and "failed" not in out


# ---- item 7: environments that refuse ----------------------------------------------------------------
def test_run_online_with_a_key_but_an_unreachable_wandb_host_fails_once_before_any_work(tmp_path, capsys,
                                                                                        monkeypatch):
    import time

    import wandb

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")  # nothing listens: refused at once
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init reached without a network"))
    path = write_suite(tmp_path)
    tic = time.time()
    assert main(["run", str(path), "--online"]) == 2
    assert time.time() - tic < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "127.0.0.1:1" in err[0] and "--online" in err[0], err
    assert not (tmp_path / "out").exists()
