"""Published numbers: the shipped tables load and validate, every row names its source, comparisons
are measured − published on a hand-made case, random weights and mismatches are never compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from runs.references import MARKS, ReferenceTableError, check_key, compare, load_references, parse_file

KEY = "moe-adapters/cifar100-10/moe-adapters"  # Avg 85.21, Last 77.52


def _config(**stream) -> dict:
    return {"model": {"arch": "ViT-B-16", "pretrained": "openai", "units": {"kind": "adapter"}},
            "stream": {"name": "split_cifar100", "steps": 10, "class_order": "seed1993", **stream},
            "method": {"name": "naive"}}


def _run(avg: float, last: float, **kw) -> dict:
    record = {"name": "naive", "protocol": "seen", "pretrained": "openai", "status": "finished",
              "metrics": {"avg": avg, "last": last}, "config": _config()}
    return record | kw


def test_shipped_tables_load_and_every_row_names_its_source() -> None:
    refs = load_references()
    assert len(refs) >= 50
    for ref in refs.values():
        assert ref.paper and ref.table and ref.mark in MARKS, ref.key
        assert ref.values
    assert refs["mozo/cifar100-10/mozo"].values == {"last": 79.87, "avg": 87.25}
    assert refs["condu/mtil-I/condu-ft"].values == {"transfer": 70.8, "avg": 78.8, "last": 87.1}
    assert refs["condu/mtil-I-task-agnostic/condu-ft"].requires["method.inference"] == "aggregated"
    assert refs["condu/mtil-I-5shot/condu-ft"].requires["stream.shots"] == 5
    assert refs["zscl/mtil-I/zscl"].mark == "authors' code"
    assert refs["mozo/memory-moe/dual-zo"].values == {"peak_memory_gb": 2.17}


def test_disagreeing_sources_are_both_kept_and_marked_unverified() -> None:
    refs = load_references()
    summary = refs["mozo/tinyimagenet-inc10/fo-baseline"]
    authors = refs["moe-adapters/tinyimagenet-100-10/moe-adapters"]
    assert summary.values == {"last": 77.52, "avg": 85.21} and authors.values == {"avg": 80.23, "last": 76.35}
    assert summary.unverified and authors.unverified
    assert authors.key in summary.conflicts_with and summary.key in authors.conflicts_with
    assert "unverified" in summary.source and "third-party summary" in summary.source


def test_measured_minus_published_on_a_hand_made_case() -> None:
    result = compare("naive", KEY, [_run(0.80, 0.70), _run(0.90, 0.74), _run(0.1, 0.1, status="failed")])
    assert result.compared
    # Avg: mean(80, 90) = 85.00 - 85.21 = -0.21; Last: mean(70, 74) = 72.00 - 77.52 = -5.52 (failed seed ignored)
    assert [(m, round(a, 2), p, round(d, 2)) for m, a, p, d in result.rows] == [
        ("avg", 85.0, 85.21, -0.21), ("last", 72.0, 77.52, -5.52)]


def test_random_weights_and_mismatches_are_never_compared() -> None:
    random_run = _run(0.8, 0.7, pretrained="none")
    assert compare("naive", KEY, [random_run]).reason.startswith("random weights")
    tiny = _run(0.8, 0.7)
    tiny["config"]["model"]["pretrained"] = "none"  # only the config says so
    assert compare("naive", KEY, [tiny]).reason.startswith("random weights")
    other = _run(0.8, 0.7, config=_config(steps=20, class_order="identity"))
    assert compare("naive", KEY, [other]).reason == (
        "stream.steps is 20, the reference needs 10; stream.class_order is identity, the reference needs seed1993")
    assert "protocol is task" in compare("naive", KEY, [_run(0.8, 0.7, protocol="task")]).reason
    assert "is a memory row" in compare("naive", "mozo/memory-moe/dual-zo", [_run(0.8, 0.7)]).reason
    assert "no finished seed" in compare("naive", KEY, [_run(0.8, 0.7, status="failed")]).reason
    unknown = compare("naive", "mozo/cifar100-10/mozoo", [_run(0.8, 0.7)])
    assert unknown.reference is None and "did you mean mozo/cifar100-10/mozo" in unknown.reason
    with pytest.raises(ReferenceTableError, match="unknown reference"):
        check_key("nope/nope/nope")


@pytest.mark.parametrize("broken, message", [
    ({"paper": "P", "settings": {"s": {"table": "T", "protocol": "seen", "rows": {"r": {"avg": 50}}}}},
     r"mark None; every row needs its source mark"),
    ({"mark": "paper", "settings": {"s": {"table": "T", "protocol": "seen", "rows": {"r": {"avg": 50}}}}},
     r"the file has no 'paper'"),
    ({"paper": "P", "mark": "paper", "settings": {"s": {"protocol": "seen", "rows": {"r": {"avg": 50}}}}},
     r"the setting has no 'table'"),
    ({"paper": "P", "mark": "blog", "settings": {"s": {"table": "T", "protocol": "seen", "rows": {"r": {"avg": 5}}}}},
     r"mark 'blog'"),
    ({"paper": "P", "mark": "paper",
      "settings": {"s": {"table": "T", "protocol": "seen", "rows": {"r": {"avg": 150}}}}},
     r"rows\.r\.avg = 150: expected a number in \[0, 100"),
    ({"paper": "P", "mark": "paper", "settings": {"s": {"table": "T", "protocol": "seen",
                                                         "requires": {"steps": 10}, "rows": {"r": {"avg": 5}}}}},
     r"'steps' is not a dotted config path"),
    ({"paper": "P", "mark": "paper", "settings": {"s": {"table": "T", "protocol": "seen", "rows": {"r": {"acc": 5}}}}},
     r"unknown key 'acc'"),
])
def test_invalid_reference_rows_are_rejected_naming_the_row(broken: dict, message: str) -> None:
    with pytest.raises(ReferenceTableError, match=message) as error:
        parse_file(Path("bad.yaml"), broken)
    assert "bad.yaml" in str(error.value)


def test_conflicts_must_name_known_rows(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(
        "paper: P\nmark: paper\nsettings:\n  s:\n    table: T\n    protocol: seen\n"
        "    conflicts_with: [y/z/w]\n    rows: {r: {avg: 5}}\n")
    with pytest.raises(ReferenceTableError, match="conflicts_with names unknown reference y/z/w"):
        load_references(tmp_path)


def test_a_random_ddas_alexnet_marks_the_run_like_random_clip_weights():
    from runs.references import random_weights

    real = {"config": {"model": {"pretrained": "openai"}, "method": {"name": "moe-adapters",
                                                                    "ddas": {"pretrained": "imagenet"}}}}
    random_alexnet = {"config": {"model": {"pretrained": "openai"}, "method": {"name": "moe-adapters",
                                                                              "ddas": {"pretrained": "none"}}}}
    assert not random_weights(real)
    assert random_weights(random_alexnet)
    assert random_weights({"config": {"model": {"pretrained": "none"}}})
