"""[workflow] The Quick start's offline use: the runner sets HF_HUB_OFFLINE=1 itself while a suite whose
weights are all `none` (or local files) runs, leaves a value the user set, and restores it after."""

from __future__ import annotations

import os
from pathlib import Path

from runs.config import load_suite
from runs.driver import offline_hub_default, run_suite

SUITES = Path(__file__).parents[1] / "runs" / "suites"


def test_offline_default_follows_the_weights(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert offline_hub_default(load_suite(SUITES / "cifar100.yaml")) is False  # openai weights: the hub
    assert "HF_HUB_OFFLINE" not in os.environ
    assert offline_hub_default(load_suite(SUITES / "smoke.yaml")) is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's value wins
    offline_hub_default(load_suite(SUITES / "smoke.yaml"))
    assert os.environ["HF_HUB_OFFLINE"] == "0"


def test_run_suite_sets_it_while_running_and_restores_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []
    monkeypatch.setattr("runs.driver._run_suite", lambda *a, **k: seen.append(os.environ.get("HF_HUB_OFFLINE")))
    run_suite(load_suite(SUITES / "smoke.yaml", output_dir=str(tmp_path)))
    assert seen == ["1"] and "HF_HUB_OFFLINE" not in os.environ


def test_smoke_suite_shows_the_methods():
    methods = {run.method.name for run in load_suite(SUITES / "smoke.yaml").runs}
    assert {"mozo", "condu", "zeroshot", "naive"} <= methods
    quickstart = (Path(__file__).parents[1] / "docs" / "quickstart.md").read_text()
    assert "python -m runs run runs/suites/smoke.yaml" in quickstart and "HF_HUB_OFFLINE" in quickstart
