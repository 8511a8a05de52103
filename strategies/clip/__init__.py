"""The CLIP classifier shared by every strategy, and its trainable units."""

from .model import (
    MASKED_LOGIT,
    CLIPClassifier,
    ModelConfig,
    WeightsUnavailableError,
    build_clip,
    image_size,
    register_model_configs,
)
from .units import BRANCHES, UnitKey, UnitsConfig, inject_units, unit_parameters

__all__ = [
    "BRANCHES", "MASKED_LOGIT", "CLIPClassifier", "ModelConfig", "UnitKey", "UnitsConfig",
    "WeightsUnavailableError", "build_clip", "image_size", "inject_units", "register_model_configs", "unit_parameters",
]
