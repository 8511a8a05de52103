"""One suite driver for every executor: serial and local produce the same suite-level files and numbers.

The tiny suite (zero-shot + Naive, 2 experiences of 4 synthetic classes) runs once in process and
once in ``--executor local`` worker processes, both with one torch thread per run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from test_results import TINY

from runs.__main__ import main
from runs.executors.base import cpu_count
from runs.status import read_plan

RUNS = ("zeroshot-seed0", "naive-seed0")
# cost figures measured on the machine (docs/metrics.md#cost): they differ between two executions, as wall_time_s
MEASURED = {"wall_time_s"} | {f"{key}_mean" for key in ("peak_memory_bytes", "train_time_s", "eval_time_s",
                                                        "train_images_per_s", "device_hours")}


def _suite_file(tmp_path: Path, out: Path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(TINY.format(out=out, extra=""))
    return path


def _numbers(suite_dir: Path) -> dict:
    runs = {}
    for run in RUNS:
        record = json.loads((suite_dir / run / "metrics.json").read_text())
        runs[run] = (record["matrix"], record["zero_shot_row"], record["metrics"], record["fingerprint"])
    with (suite_dir / "results.csv").open() as f:
        table = [{k: v for k, v in row.items() if k not in MEASURED} for row in csv.DictReader(f)]
    return {"runs": runs, "table": table}


def _run(tmp_path: Path, name: str, *executor: str) -> Path:
    out = tmp_path / name
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the local workers get cores // workers = 1 thread each
    try:
        assert main(["run", str(_suite_file(tmp_path, out)), *executor]) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "tiny"


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("driver")
    serial = _run(tmp, "serial")
    local = _run(tmp, "local", "--executor", "local", "--workers", str(cpu_count()))
    return serial, local


def test_serial_and_local_write_the_same_suite_files(both):
    serial, local = both
    names = {p.name for p in serial.iterdir()}
    assert names == {p.name for p in local.iterdir()}
    for name in ("results.md", "results.csv", "runs.csv", "accuracy_per_step.png", "suite_run.json", "wandb",
                 ".plan.json", *RUNS):
        assert name in names, name
    assert [line.split("|")[1] for line in (serial / "results.md").read_text().splitlines() if line.startswith("| ")] \
        == [line.split("|")[1] for line in (local / "results.md").read_text().splitlines() if line.startswith("| ")]


def test_serial_and_local_give_the_same_numbers(both):
    serial, local = both
    assert _numbers(serial) == _numbers(local)
    assert [row["name"] for row in _numbers(serial)["table"]] == ["zeroshot", "naive"]  # suite order


def test_the_plan_file_keeps_suite_order_and_clears_the_pending_mark(both):
    for suite_dir in both:
        plan = read_plan(suite_dir)
        assert plan is not None and plan["order"] == ["zeroshot", "naive"] and plan["outputs_pending"] is False


def test_report_writes_outputs_a_no_wait_invocation_left_pending(both, tmp_path, capsys):
    serial, _ = both
    plan = read_plan(serial)
    assert plan is not None
    (serial / ".plan.json").write_text(json.dumps(plan | {"outputs_pending": True}))
    before = json.loads((serial / "suite_run.json").read_text())
    (serial / "results.md").unlink()
    assert main(["report", str(serial)]) == 0
    assert (serial / "results.md").is_file()
    assert json.loads((serial / "suite_run.json").read_text()) == before  # the same suite W&B run, resumed
    assert read_plan(serial)["outputs_pending"] is False
    out = capsys.readouterr().out
    assert out.index("| zeroshot") < out.index("| naive")
