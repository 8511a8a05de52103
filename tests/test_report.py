"""Suite report: hand-computed means/stds in the table and CSVs, omitted columns, notes, PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from runs.report import format_table, load_run_records, summarize_runs, write_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(name: str, stream: str, seed: int, avg: float, last: float, forgetting: float, bwt: float,
            pretrained: str = "openai") -> dict:
    return {
        "run_id": f"{name}-{stream}-s{seed}", "name": name, "method": name, "stream": stream, "seed": seed,
        "protocol": "seen", "pretrained": pretrained,
        "metrics": {"avg": avg, "last": last, "forgetting": forgetting, "bwt": bwt, "transfer": None},
        "accuracy_per_step": [0.9, 0.8, last], "experience_names": ["exp0", "exp1", "exp2"],
        "matrix": [[0.9, None, None], [0.8, 0.8, None], [0.7, 0.6, last]],
        "zero_shot_row": [0.3, 0.2, 0.1] if seed == 0 else None, "wall_time_s": 10.0 + seed,
    }


@pytest.fixture
def records() -> list[dict]:
    return [
        _record("naive", "split_cifar100", 0, 0.70, 0.60, 0.10, -0.10),
        _record("naive", "split_cifar100", 1, 0.72, 0.64, 0.14, -0.06),
        _record("ewc", "split_cifar100", 0, 0.80, 0.75, 0.05, -0.02),
        _record("ewc", "split_cifar100", 1, 0.84, 0.77, 0.07, -0.04),
        _record("ewc", "tiny_synthetic", 0, 0.50, 0.40, 0.20, -0.20, pretrained="none"),
    ]


def _row(table: str, name: str, stream: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:3] == [name, name, stream]:
            return cells
    raise AssertionError(f"no row for {name}/{stream} in\n{table}")


def test_table_has_hand_computed_mean_and_std(records: list[dict]) -> None:
    table = format_table(records)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == ["Run", "Method", "Stream", "Seeds", "Avg", "Last", "Forgetting", "BWT"]  # no Transfer
    # naive: avg (70, 72) -> 71 ± stdev 1.41; last (60, 64) -> 62 ± 2.83; bwt (-10, -6) -> -8 ± 2.83
    assert _row(table, "naive", "split_cifar100")[3:] == ["2", "71.00 ± 1.41", "62.00 ± 2.83", "12.00 ± 2.83",
                                                          "-8.00 ± 2.83"]
    assert _row(table, "ewc", "split_cifar100")[3:] == ["2", "82.00 ± 2.83", "76.00 ± 1.41", "6.00 ± 1.41",
                                                        "-3.00 ± 1.41"]
    assert _row(table, "ewc", "tiny_synthetic")[3:] == ["1", "50.00", "40.00", "20.00", "-20.00"]  # no std
    assert "not paper results" in table and "(ewc on tiny_synthetic)" in table


def test_note_only_for_random_weights_and_transfer_shown_when_present(records: list[dict]) -> None:
    pretrained = [r for r in records if r["pretrained"] != "none"]
    assert "not paper results" not in format_table(pretrained)
    pretrained[0]["metrics"]["transfer"] = 0.05
    table = format_table(pretrained)
    assert table.splitlines()[0].rstrip().endswith("| Transfer |")
    assert _row(table, "naive", "split_cifar100")[-1] == "5.00"  # one seed has it: mean of present values
    assert _row(table, "ewc", "split_cifar100")[-1] == "–"


def test_summarize_groups_by_name_and_stream(records: list[dict]) -> None:
    summaries = summarize_runs(records)
    assert [(s["name"], s["stream"], s["seeds"]) for s in summaries] == [
        ("naive", "split_cifar100", [0, 1]),
        ("ewc", "split_cifar100", [0, 1]),
        ("ewc", "tiny_synthetic", [0]),
    ]
    naive = summaries[0]
    assert naive["avg_mean"] == pytest.approx(0.71) and naive["avg_std"] == pytest.approx(0.0141421356)
    assert naive["transfer_mean"] is None and summaries[2]["avg_std"] is None
    assert naive["accuracy_per_step_mean"] == pytest.approx([0.9, 0.8, 0.62])
    assert naive["wall_time_s"] == pytest.approx(10.5)


def test_write_results_files(records: list[dict], tmp_path: Path) -> None:
    paths = write_results(records, tmp_path / "report")
    expected = {"results.md", "results.csv", "runs.csv", "accuracy_per_step.png"}
    expected |= {f"matrix_{r['run_id']}.png" for r in records}
    assert set(paths) == expected
    assert paths["results.md"].read_text().startswith("# Results")
    assert "71.00 ± 1.41" in paths["results.md"].read_text()
    for name in expected:
        assert paths[name].is_file() and paths[name].stat().st_size > 0
        if name.endswith(".png"):
            assert paths[name].read_bytes()[:8] == PNG_MAGIC

    with paths["results.csv"].open() as handle:
        groups = list(csv.DictReader(handle))
    assert [(g["name"], g["stream"], g["n_seeds"], g["seeds"]) for g in groups] == [
        ("naive", "split_cifar100", "2", "0 1"), ("ewc", "split_cifar100", "2", "0 1"),
        ("ewc", "tiny_synthetic", "1", "0")]
    assert float(groups[0]["avg_mean"]) == pytest.approx(0.71)
    assert float(groups[0]["avg_std"]) == pytest.approx(0.0141421356)
    assert groups[0]["transfer_mean"] == "" and groups[2]["avg_std"] == ""
    with paths["runs.csv"].open() as handle:
        runs = list(csv.DictReader(handle))
    assert [r["run_id"] for r in runs] == [r["run_id"] for r in records]
    assert float(runs[1]["last"]) == pytest.approx(0.64) and runs[1]["seed"] == "1"


def test_load_run_records_skips_folders_without_metrics(records: list[dict], tmp_path: Path) -> None:
    for record in records:
        (tmp_path / record["run_id"]).mkdir()
        (tmp_path / record["run_id"] / "metrics.json").write_text(json.dumps(record))
    (tmp_path / "crashed-run").mkdir()  # no metrics.json
    loaded = load_run_records(tmp_path)
    assert sorted(r["run_id"] for r in loaded) == sorted(r["run_id"] for r in records)
    assert [r["run_id"] for r in loaded] == sorted(r["run_id"] for r in records)  # folder-name order


def test_bad_input_raises(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text(json.dumps({"run_id": "broken", "name": "x"}))
    with pytest.raises(ValueError, match="stream, metrics"):
        load_run_records(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_run_records(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least one"):
        write_results([], tmp_path / "out")
