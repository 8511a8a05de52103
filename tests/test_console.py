"""A quiet console: the smoke suite prints a short log; Avalanche's dump goes to log.txt (-v: console too)."""

from __future__ import annotations

import logging
from pathlib import Path

from runs.__main__ import main
from runs.console import ProgressPlugin

ROOT = Path(__file__).resolve().parents[1]


# the smoke suite's own console (short, the dump in log.txt): tests/test_smoke_suite.py::test_smoke_suite_end_to_end


def test_verbose_restores_the_dump_on_the_console(tmp_path, capsys):
    code = main(["-v", "run", str(ROOT / "runs" / "suites" / "smoke.yaml"), "--output-dir", str(tmp_path),
                 "--only", "naive", "--set", "stream.n_experiences=2", "--set", "stream.n_classes=4",
                 "--set", "train.epochs=1"])
    assert code == 0
    assert "Top1_Acc_Stream" in capsys.readouterr().out


class _Loss:
    def __float__(self):
        return 0.5


class _Strategy:
    def __init__(self, total):
        self.plugins, self.loss, self.train_epochs = [], _Loss(), 1
        self.dataloader = range(total)

        class _Exp:
            current_experience = 0

        self.experience = _Exp()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_plain_progress_lines_every_ten_percent_without_a_terminal():
    caplog = _Collect()
    logger = logging.getLogger("runs.console")
    logger.addHandler(caplog)
    logger.setLevel(logging.INFO)
    plugin = ProgressPlugin("naive-seed0", 3, tty=False, min_interval=0.0)
    strategy = _Strategy(40)
    plugin.before_training_exp(strategy)
    for _ in range(40):
        plugin.after_training_iteration(strategy)
    plugin.after_training_exp(strategy)
    logger.removeHandler(caplog)
    lines = [r.getMessage() for r in caplog.records if r.name == "runs.console"]
    assert len(lines) == 10 and "100%" in lines[-1] and "iteration 40/40" in lines[-1]
    assert lines[0].startswith("naive-seed0 exp 1/3   10%")
    quiet = ProgressPlugin("naive-seed0", 3, tty=False)  # default: at most one line per 10 s
    logger.addHandler(caplog)
    caplog.records.clear()
    quiet.before_training_exp(strategy)
    for _ in range(40):
        quiet.after_training_iteration(strategy)
    logger.removeHandler(caplog)
    assert caplog.records == []
