"""[workflow] A diverged run reads as one line on the console; the traceback stays in its log.txt."""

from __future__ import annotations

from test_results import write_suite

from runs.__main__ import main


def test_a_diverged_run_prints_one_line_and_keeps_the_traceback_in_its_log(tmp_path, capsys):
    path = write_suite(tmp_path, "  - {method: naive, name: naive-hot, train: {lr: 1.0e+12}}\n")
    assert main(["run", str(path), "--only", "naive-hot"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "iteration None" not in err
    during = [line for line in err.splitlines() if "non-finite" in line and not line.startswith("failed:")]
    assert len(during) == 1, during  # one line while the suite goes on ...
    assert "iteration 1" in during[0] and "log.txt" in during[0]
    assert sum(line.startswith("failed: naive-hot-seed0") for line in err.splitlines()) == 1  # ... one in the summary
    log = (tmp_path / "out" / "tiny" / "naive-hot-seed0" / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "DivergedError" in log
