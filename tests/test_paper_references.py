"""[workflow] Paper tables wired up: every paper suite names its rows' published references, the runs
match the rows' comparability keys, ``runs list references`` prints them with their sources, and a
``reference:`` added to a finished run is read from the suite (it is not fingerprinted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runs.__main__ import main
from runs.config import load_suite, to_plain
from runs.references import load_references, mismatches
from runs.report import format_table

SUITES = Path(__file__).parents[1] / "runs" / "suites"
# this issue's suites (ZSCL's and MoE-Adapters' suites name their own rows)
PAPER_SUITES = ("mozo_paper", "cifar100", "imagenet_r", "mtil", "condu_paper", "condu_fewshot", "condu_task_agnostic")


def _protocol(run) -> str:
    return "task" if run.stream.name == "mtil" or run.eval.task_aware else "seen"


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_paper_suites_name_references_their_runs_match(name):
    suite = load_suite(SUITES / f"{name}.yaml")
    named = [run for run in suite.runs if run.reference]
    assert named, f"{name}: no run names a published row"
    references = load_references()
    for run in named:
        ref = references[run.reference]
        assert mismatches(to_plain(run), _protocol(run), ref) == [], (name, run.name)
        if run.method.name == "lwf":  # Avalanche's logit distillation is not the papers' CLIP "LwF"
            raise AssertionError(f"{name}: {run.name} (Avalanche lwf) names {run.reference}")


def test_no_avalanche_lwf_names_a_published_lwf_row():
    for path in SUITES.glob("*.yaml"):
        for run in load_suite(path).runs:
            if run.method.name == "lwf":
                assert run.reference is None, (path.name, run.name)


def test_mozo_paper_table_ends_with_measured_published_and_difference_per_row():
    suite = load_suite(SUITES / "mozo_paper.yaml")
    records = []
    for i, run in enumerate(suite.runs):
        config = to_plain(run) | {"seed": 0}
        records.append({"run_id": f"{run.name}-seed0", "name": run.name, "method": run.method.name,
                        "stream": run.stream.name, "seed": 0, "protocol": "seen", "pretrained": "openai",
                        "arch": "ViT-B-16", "metrics": {"avg": 0.80 + i / 1000, "last": 0.70}, "config": config,
                        "reference": run.reference, "provenance": {"data": {"status": "complete"}}})
    text = format_table(records, run_order=[r.name for r in suite.runs])
    published = text.split("**Published numbers**")[1]
    for run in suite.runs:
        if run.reference:
            lines = [line for line in published.splitlines() if line.startswith(f"| {run.name} |")]
            assert len(lines) == 2, run.name  # Avg and Last, each with measured, published, difference
            assert all(line.count("|") >= 8 and ("+" in line or "-" in line) for line in lines)
    # a subset of the data is never compared, and says why
    records[0]["provenance"] = {"data": {"status": "subset"}}
    assert "fo-baseline → `mozo/cifar100-10/fo-baseline`: not compared: subset data" in format_table(records)


def test_list_references_prints_keys_with_sources(capsys):
    assert main(["list", "references"]) == 0
    out = capsys.readouterr().out
    for key, ref in load_references().items():
        line = next(line for line in out.splitlines() if line.strip().startswith(key + " "))
        assert ref.table in line and ref.mark in line


def test_a_reference_added_to_a_finished_run_is_read_from_the_suite(tmp_path, capsys):
    from test_results import write_suite

    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    named = "  - method: zeroshot\n    reference: continual-clip/cifar100-10/zeroshot\n"
    path.write_text(path.read_text().replace("  - method: zeroshot\n", named))
    capsys.readouterr()
    assert main(["run", str(path)]) == 0  # not fingerprinted: nothing refused, nothing re-run
    reason = "zeroshot → `continual-clip/cifar100-10/zeroshot`: not compared: random weights"
    assert reason in capsys.readouterr().out
    assert reason in (tmp_path / "out" / "tiny" / "results.md").read_text()
    assert main(["report", str(tmp_path / "out" / "tiny")]) == 0
    assert reason in capsys.readouterr().out
