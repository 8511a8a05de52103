"""[workflow] Tables keep their context: rows in suite order in ``report`` and the W&B Report outline,
the unit kind / stream split, order, shots / precision per row or in a caption, and runs whose entry
comes from a ``--rerun-changed`` marked. Runs are tiny (synthetic stream, random weights)."""

from __future__ import annotations

from test_results import TINY

from runs import share
from runs.__main__ import main
from runs.report import format_table, summarize_runs, table_caption, table_rows

# "zz-naive" comes before "aa-naive" in the suite, after it in folder-name order
SUITE_ORDER = ["zeroshot", "naive", "zz-naive", "aa-naive"]


def _suite(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(TINY.format(out=tmp_path / "out", extra="  - {method: naive, name: zz-naive}\n"
                                                          "  - {method: naive, name: aa-naive}\n"))
    return path


class _Report:
    title, description, entity, project, blocks = "t", "", "e", "p", []


def test_rows_in_suite_order_with_their_setting_and_rerun_mark(tmp_path, capsys):
    path = _suite(tmp_path)
    assert main(["run", str(path)]) == 0
    suite_dir = tmp_path / "out" / "tiny"
    capsys.readouterr()
    assert main(["report", str(suite_dir)]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "Run" not in line]
    assert rows[:4] == SUITE_ORDER
    # the setting every row shares, in the caption: unit kind, stream options, precision
    assert "Setting of every row: units adapter; stream n_classes 4, n_experiences 2" in out and "precision fp32" in out
    # the W&B Report outline of the folder: the same order (from .plan.json), the caption with it
    info = share.load_suite_info(suite_dir)
    outline = share.outline(_Report(), info)
    assert [row[0] for row in outline["table"]["rows"]] == SUITE_ORDER
    assert outline["table"]["caption"].startswith("Setting of every row: units adapter")
    # --rerun-changed: the new entry is marked, with a note
    assert main(["run", str(path), "--set", "aa-naive:train.lr=0.02", "--rerun-changed"]) == 0
    table = (suite_dir / "results.md").read_text()
    assert "Re-run with `--rerun-changed` (aa-naive seed 0)" in table
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "Run" not in line]
    assert rows[:4] == [*SUITE_ORDER[:3], "aa-naive †"]


def test_rows_that_differ_in_setting_get_a_setting_column():
    def record(name, kind, shots, precision):
        config = {"model": {"units": {"kind": kind}}, "stream": {"name": "mtil", "order": "I", "shots": shots},
                  "train": {"precision": precision}}
        return {"run_id": f"{name}-seed0", "name": name, "method": "naive", "stream": "mtil", "seed": 0,
                "metrics": {"avg": 0.5}, "config": config, "protocol": "task"}

    records = [record("full", "full", None, "bf16"), record("lora", "lora", 5, "fp32")]
    summaries = summarize_runs(records, run_order=["full", "lora"])
    header, rows = table_rows(summaries)
    assert header[:4] == ["Run", "Method", "Stream", "Setting"] and table_caption(summaries) == ""
    assert rows[0][3] == "units full; stream order I; precision bf16"
    assert rows[1][3] == "units lora; stream order I, shots 5; precision fp32"
    assert "| Setting |" in format_table(records)
