"""Suite report: hand-computed means/stds, suite order, failed runs, notes, published numbers, plots,
run-folder loading and the suite-folder argument."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from runs import report
from runs.references import load_references
from runs.report import (
    RunFolderError,
    accuracy_figure,
    format_table,
    load_run_records,
    matrix_figure,
    resolve_suite_dir,
    summarize_runs,
    write_results,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REFERENCE = "mozo/cifar100-10/mozo"  # published Avg 87.25, Last 79.87 (runs/references/mozo.yaml)


def _record(name: str, stream: str, seed: int, avg: float, last: float, forgetting: float, bwt: float,
            pretrained: str = "openai", method: str | None = None) -> dict:
    return {
        "run_id": f"{name}-{stream}-s{seed}", "name": name, "method": method or name, "stream": stream,
        "seed": seed, "protocol": "seen", "pretrained": pretrained, "arch": "ViT-B-16",
        "metrics": {"avg": avg, "last": last, "forgetting": forgetting, "bwt": bwt, "transfer": None},
        "accuracy_per_step": [0.9, 0.8, last], "experience_names": ["exp0", "exp1", "exp2"],
        "matrix": [[0.9, None, None], [0.8, 0.8, None], [0.7, 0.6, last]],
        "zero_shot_row": [0.3, 0.2, 0.1] if seed == 0 else None, "wall_time_s": 10.0 + seed,
    }


def _failed(name: str, stream: str, seed: int) -> dict:
    return {"status": "failed", "run_id": f"{name}-{stream}-s{seed}", "name": name, "method": name,
            "stream": stream, "seed": seed, "reason": "non-finite loss", "experience": 1, "iteration": 3,
            "log": "log.txt", "fingerprint": "abc"}


def _config(steps: int = 10, pretrained: str = "openai", arch: str = "ViT-B-16") -> dict:
    return {"model": {"arch": arch, "pretrained": pretrained, "units": {"kind": "moe"}},
            "stream": {"name": "split_cifar100", "steps": steps, "class_order": "seed1993"},
            "method": {"name": "mozo"}, "reference": REFERENCE}


@pytest.fixture
def records() -> list[dict]:
    return [
        _record("naive", "split_cifar100", 0, 0.70, 0.60, 0.10, -0.10),
        _record("naive", "split_cifar100", 1, 0.72, 0.64, 0.14, -0.06),
        _record("ewc", "split_cifar100", 0, 0.80, 0.75, 0.05, -0.02),
        _record("ewc", "split_cifar100", 1, 0.84, 0.77, 0.07, -0.04),
        _record("ewc", "tiny_synthetic", 0, 0.50, 0.40, 0.20, -0.20, pretrained="none"),
    ]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(table: str, name: str, stream: str) -> list[str]:
    for line in table.splitlines():
        cells = _cells(line)
        if cells[0] == name and cells[2:3] == [stream]:
            return cells
    raise AssertionError(f"no row for {name}/{stream} in\n{table}")


def test_table_has_hand_computed_mean_and_std(records: list[dict]) -> None:
    for r in records:
        r["metrics"]["zero_shot"] = 0.30 if r["seed"] == 0 else 0.40
    table = format_table(records)
    header = _cells(table.splitlines()[0])
    assert header == ["Run", "Method", "Stream", "Model", "Seeds", "Zero-shot", "Avg", "Last", "Forgetting", "BWT"]
    # naive: avg (70, 72) -> 71 ± stdev 1.41; last (60, 64) -> 62 ± 2.83; bwt (-10, -6) -> -8 ± 2.83
    assert _row(table, "naive", "split_cifar100")[3:] == [
        "ViT-B-16/openai", "2", "35.00 ± 7.07", "71.00 ± 1.41", "62.00 ± 2.83", "12.00 ± 2.83", "-8.00 ± 2.83"]
    assert _row(table, "ewc", "split_cifar100")[6:] == ["82.00 ± 2.83", "76.00 ± 1.41", "6.00 ± 1.41", "-3.00 ± 1.41"]
    assert _row(table, "ewc", "tiny_synthetic")[3:] == ["ViT-B-16, random weights", "1", "30.00", "50.00", "40.00",
                                                         "20.00", "-20.00"]  # one seed: no std
    assert "not paper results" in table and "(ewc on tiny_synthetic)" in table
    assert report.METRIC_DEFINITIONS["seen"] in table and report.METRIC_DEFINITIONS["task"] not in table


def test_note_only_for_random_weights_and_transfer_shown_when_present(records: list[dict]) -> None:
    pretrained = [r for r in records if r["pretrained"] != "none"]
    assert "not paper results" not in format_table(pretrained)
    pretrained[0]["metrics"]["transfer"] = 0.05
    table = format_table(pretrained)
    assert table.splitlines()[0].rstrip().endswith("| Transfer |")
    assert _row(table, "naive", "split_cifar100")[-1] == "5.00"  # one seed has it: mean of present values
    assert _row(table, "ewc", "split_cifar100")[-1] == "–"


def test_rows_follow_suite_order_with_zero_shot_first(records: list[dict]) -> None:
    zs = _record("zeroshot", "split_cifar100", 0, 0.40, 0.30, 0.08, -0.08)
    ordered = summarize_runs([*records, zs], run_order=["ewc", "naive", "zeroshot"])
    assert [(s["name"], s["stream"]) for s in ordered] == [
        ("zeroshot", "split_cifar100"), ("ewc", "split_cifar100"), ("ewc", "tiny_synthetic"),
        ("naive", "split_cifar100")]
    table = format_table([*records, zs], run_order=["ewc", "naive", "zeroshot"])
    names = [_cells(line)[0] for line in table.splitlines()[2:6]]
    assert names == ["zeroshot", "ewc", "ewc", "naive"]
    # zero-shot's forgetting comes from the growing label space: footnoted, and only for it
    assert _row(table, "zeroshot", "split_cifar100")[-2:] == ["8.00 ¹", "-8.00 ¹"]
    assert _row(table, "naive", "split_cifar100")[-2] == "12.00 ± 2.83"
    assert report.ZERO_SHOT_FOOTNOTE in table


def test_failed_runs_are_marked_and_left_out_of_means(records: list[dict]) -> None:
    mixed = [records[0], _failed("naive", "split_cifar100", 1), _failed("lwf", "split_cifar100", 0)]
    table = format_table(mixed)
    naive = _row(table, "naive", "split_cifar100")
    assert naive[4:] == ["1 + 1 failed", "70.00", "60.00", "10.00", "-10.00"]  # seed 0 alone
    assert _row(table, "lwf", "split_cifar100")[4:] == ["0 + 1 failed"] + ["failed"] * 4
    assert "naive (seeds 1)" in table and "lwf (seeds 0)" in table
    assert [s["name"] for s in summarize_runs(mixed)] == ["naive", "lwf"]  # each run once


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
    assert naive["zero_shot_point"] == pytest.approx(0.3)  # only seed 0 has a zero-shot row


def test_published_numbers_measured_minus_published(records: list[dict]) -> None:
    mozo = [_record("mozo", "split_cifar100", s, avg, last, 0.0, 0.0) for s, avg, last in
            [(0, 0.88, 0.80), (1, 0.86, 0.78)]]
    for r in mozo:
        r["config"] = _config()
    table = format_table([*records, *mozo])
    lines = {(c[0], c[2]): c for c in map(_cells, table.splitlines()) if c[:2] == ["mozo", f"`{REFERENCE}`"]}
    # measured Avg = (88 + 86) / 2 = 87.00, published 87.25 -> -0.25; Last 79.00 vs 79.87 -> -0.87
    assert lines[("mozo", "Avg")][3:6] == ["87.00", "87.25", "-0.25"]
    assert lines[("mozo", "Last")][3:6] == ["79.00", "79.87", "-0.87"]
    assert "third-party summary" in lines[("mozo", "Avg")][6]

    for r in mozo:
        r["config"] = _config(steps=20)
    assert "not compared: stream.steps is 20, the reference needs 10" in format_table(mozo)
    for r in mozo:
        r["config"], r["pretrained"] = _config(pretrained="none"), "none"
    table = format_table(mozo)
    assert "random weights (pretrained: none) are never compared" in table and "87.25" not in table


def test_write_results_files_are_atomic_and_complete(records: list[dict], tmp_path: Path) -> None:
    mozo = _record("mozo", "split_cifar100", 0, 0.88, 0.80, 0.0, 0.0)
    mozo["config"] = _config()
    paths = write_results([*records, mozo, _failed("lwf", "split_cifar100", 0)], tmp_path / "report",
                          suite="demo")
    expected = {"results.md", "results.csv", "runs.csv", "references.csv", "accuracy_per_step.png"}
    expected |= {f"matrix_{r['run_id']}.png" for r in [*records, mozo]}  # none for the failed run
    assert set(paths) == expected
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(expected)  # no temporary file left
    assert paths["results.md"].read_text().startswith("# Results: demo")
    assert "71.00 ± 1.41" in paths["results.md"].read_text()
    for name in expected:
        if name.endswith(".png"):
            assert paths[name].read_bytes()[:8] == PNG_MAGIC

    with paths["results.csv"].open() as handle:
        groups = list(csv.DictReader(handle))
    assert [(g["name"], g["stream"], g["n_seeds"], g["seeds"], g["n_failed"]) for g in groups] == [
        ("naive", "split_cifar100", "2", "0 1", "0"), ("ewc", "split_cifar100", "2", "0 1", "0"),
        ("ewc", "tiny_synthetic", "1", "0", "0"), ("mozo", "split_cifar100", "1", "0", "0"),
        ("lwf", "split_cifar100", "0", "", "1")]
    assert float(groups[0]["avg_mean"]) == pytest.approx(0.71)
    assert float(groups[0]["avg_std"]) == pytest.approx(0.0141421356)
    assert groups[0]["transfer_mean"] == "" and groups[2]["avg_std"] == ""
    with paths["runs.csv"].open() as handle:
        runs = list(csv.DictReader(handle))
    assert [r["status"] for r in runs] == ["finished"] * 6 + ["failed"]
    assert float(runs[1]["last"]) == pytest.approx(0.64) and runs[1]["seed"] == "1" and runs[6]["avg"] == ""
    with paths["references.csv"].open() as handle:
        compared = {r["metric"]: r for r in csv.DictReader(handle)}
    assert float(compared["avg"]["difference"]) == pytest.approx(88.0 - 87.25)


def test_failed_write_leaves_no_temporary_file(records: list[dict], tmp_path: Path, monkeypatch) -> None:
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="results.md: cannot write: no space left on device"):
        write_results(records, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_accuracy_curve_starts_at_zero_shot_point_and_marks_random_weights(records: list[dict]) -> None:
    summaries = summarize_runs(records)
    figure = accuracy_figure(summaries, suite="demo-suite")
    assert "demo-suite" in figure.get_suptitle()
    first_axes = figure.axes[0]
    naive_line = next(line for line in first_axes.get_lines() if line.get_label().startswith("naive"))
    assert list(naive_line.get_xdata()) == [0, 1, 2, 3]
    assert list(naive_line.get_ydata()) == pytest.approx([30.0, 90.0, 80.0, 62.0])  # zero-shot, then steps
    assert figure.get_supxlabel() == report.RANDOM_MARK  # the tiny_synthetic run has random weights
    assert "RANDOM WEIGHTS" in [t.get_text() for t in figure.texts]  # and the watermark
    pretrained = summarize_runs([r for r in records if r["pretrained"] != "none"])
    clean = accuracy_figure(pretrained, suite="s")
    assert clean.get_supxlabel() == "" and "RANDOM WEIGHTS" not in [t.get_text() for t in clean.texts]
    matrix = matrix_figure(records[-1], suite="demo-suite")
    assert "demo-suite" in matrix.axes[0].get_title()
    assert matrix.get_supxlabel() == report.RANDOM_MARK


def _write_folder(root: Path, record: dict, file: str = "metrics.json") -> Path:
    folder = root / f"{record['name']}-seed{record['seed']}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file).write_text(json.dumps(record))
    return folder


def test_load_run_records_reads_live_folders_once(records: list[dict], tmp_path: Path) -> None:
    naive0, naive1, ewc0 = records[0], records[1], records[2]
    folder = _write_folder(tmp_path, naive0)
    (folder / "config.yaml").write_text(yaml.safe_dump(_config()))
    _write_folder(tmp_path, naive1)
    _write_folder(tmp_path, _failed("naive", "split_cifar100", 1), "failed.json")  # metrics.json wins
    _write_folder(tmp_path, _failed("lwf", "split_cifar100", 0), "failed.json")
    _write_folder(tmp_path / ".superseded", ewc0)  # never read
    (tmp_path / "crashed-run").mkdir()  # neither file: skipped
    loaded = load_run_records(tmp_path)
    assert [(r["name"], r["seed"], r["status"]) for r in loaded] == [
        ("lwf", 0, "failed"), ("naive", 0, "finished"), ("naive", 1, "finished")]
    assert loaded[1]["config"]["stream"]["steps"] == 10 and loaded[2]["config"] is None
    assert loaded[1]["folder"] == str(folder)


def test_bad_input_raises_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text(json.dumps({"run_id": "broken", "name": "x"}))
    with pytest.raises(RunFolderError, match="broken/metrics.json: run record lacks stream, metrics"):
        load_run_records(tmp_path)
    (tmp_path / "broken" / "metrics.json").write_text('{"run_id": "x", "na')  # truncated
    with pytest.raises(RunFolderError, match=r"broken/metrics\.json: unreadable run record \(JSONDecodeError"):
        load_run_records(tmp_path)
    (tmp_path / "broken" / "metrics.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RunFolderError, match=r"broken/metrics\.json: unreadable run record"):
        load_run_records(tmp_path)
    with pytest.raises(RunFolderError, match="suite folder not found"):
        load_run_records(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least one"):
        write_results([], tmp_path / "out")


def test_resolve_suite_dir_accepts_yaml_or_folder(records: list[dict], tmp_path: Path) -> None:
    suite_yaml = tmp_path / "s.yaml"
    suite_yaml.write_text(yaml.safe_dump({
        "name": "demo", "output_dir": str(tmp_path / "outputs"),
        "defaults": {"model": {"arch": "clip-tiny", "pretrained": "none"}, "stream": "synthetic"},
        "runs": [{"method": "naive"}]}))
    with pytest.raises(RunFolderError, match="has no output folder .*outputs/demo yet"):
        resolve_suite_dir(str(suite_yaml))
    _write_folder(tmp_path / "outputs" / "demo", records[0])
    assert resolve_suite_dir(str(suite_yaml)) == tmp_path / "outputs" / "demo"
    assert resolve_suite_dir(str(tmp_path / "outputs" / "demo")) == tmp_path / "outputs" / "demo"
    with pytest.raises(RunFolderError, match="no run folders .*its sub-folders demo are suite folders"):
        resolve_suite_dir(str(tmp_path / "outputs"))
    with pytest.raises(RunFolderError, match="neither a suite YAML nor a suite output folder"):
        resolve_suite_dir(str(tmp_path / "nowhere"))


def test_shipped_references_load() -> None:
    assert REFERENCE in load_references()
