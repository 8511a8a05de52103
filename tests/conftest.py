"""Hermetic test environment: no hub access, W&B offline into a temporary folder, tiny models."""

from __future__ import annotations

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

import strategies  # noqa: E402, F401  (torchvision shim before anything else)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
