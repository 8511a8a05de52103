"""Runs on the real image subsets in ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runs.__main__ import main
from runs.config import load_suite
from runs.runner import run_suite

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "tiny-imagenet-200").is_dir(), reason=f"{DATA} not present")


def test_tinyimagenet_suite_trains_and_evaluates_on_real_images(tmp_path):
    overrides = [f"data_root={DATA}", "stream.increment=100", "stream.train_per_class=5"]
    suite = load_suite(ROOT / "runs" / "suites" / "tinyimagenet_local.yaml", overrides=overrides)
    suite.output_dir = str(tmp_path)
    records = {r["name"]: r for r in run_suite(suite, only=["naive"]).records}
    naive = records["naive"]
    assert naive["test_sizes"] == [5000, 5000]  # the complete validation set: 50 images × 100 classes
    matrix = np.asarray(naive["matrix"])
    assert matrix.shape == (2, 2) and np.all(np.isfinite(matrix))
    assert (tmp_path / "tinyimagenet_local" / "results.md").exists()


def test_data_check_reports_the_shared_subset(capsys):
    assert main(["data", "check", "split_tinyimagenet", "--data-root", str(DATA)]) == 0
    out = capsys.readouterr().out
    assert "10000 labels (expected 10000)" in out and "incomplete" in out and "0 missing, 0 corrupt" in out
    assert main(["data", "check", "split_cifar100", "--data-root", str(DATA)]) == 1
    assert main(["data", "check", "no_such_stream", "--data-root", str(DATA)]) == 2
