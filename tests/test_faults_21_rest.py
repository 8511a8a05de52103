"""[faults] issue 21, the rest: damaged side files in the report, two drivers on one output folder,
environments that refuse (W&B host unreachable, read-only output folder, full disk during a checkpoint),
damaged data named. Tiny in-process suites (2 experiences, 4 classes) unless a second process is the point."""

from __future__ import annotations

import json

from test_results import _folder, write_suite

from runs.__main__ import main


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
