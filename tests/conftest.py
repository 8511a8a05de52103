"""Hermetic test environment: no hub access, W&B offline into a temporary folder, tiny models."""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="clipcl-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
    os.environ[var] = str(_TMP / var.lower())

import pytest  # noqa: E402
import torch  # noqa: E402

import strategies  # noqa: E402, F401  # isort: skip  (torchvision shim before anything else)
import runs.session  # noqa: E402, F401  # isort: skip
import wandb  # noqa: E402, F401  # isort: skip

# The objects of these imports live as long as the process. Frozen, the full collection the cost plugin runs
# at the start of every run (runs/costs.py) skips them: ~0.3 s a run here, over the few hundred runs of the tests.
gc.collect()
gc.freeze()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped (not failed) on a machine without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_wandb(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """W&B state per test: its own folders, and no run left open for the next test.

    ``wandb.init`` while a run is still open returns or finishes that run depending on the version,
    so a test that does not finish its run made a later test see the earlier one's run folder.
    """
    folder = tmp_path_factory.mktemp("wandb")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(folder / var.lower()))
    yield
    if wandb.run is not None:
        wandb.finish()


@pytest.fixture
def tiny_model_factory():
    """Build a tiny random-init CLIP classifier with the given units (seeded)."""
    from strategies.clip import ModelConfig, UnitsConfig, build_clip

    def make(kind: str = "adapter", seed: int = 0, **units):
        torch.manual_seed(seed)
        cfg = ModelConfig(arch="clip-tiny", pretrained="none", units=UnitsConfig(kind=kind, **units))
        model, _, _ = build_clip(cfg)
        model.set_class_prompts([["a photo of a cat."], ["a photo of a dog.", "a dog."], ["a car."]])
        return model

    return make
