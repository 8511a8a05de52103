"""ConDU's options (:class:`ConDUConfig`): inference route, aggregation and prototypes (ConDU §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..options import COUNT, NONNEGATIVE, POSITIVE, option


@dataclass
class ConDUConfig:
    inference: Literal["auto", "task_aware", "aggregated"] = option("auto",
        "auto: task-aware on task-incremental streams")
    top_k: int = option(4, "tasks aggregated per image (plus the pretrained model)", range=NONNEGATIVE)
    weighting: Literal["uniform", "similarity", "softmax"] = option("uniform", "mixing of the selected models")
    temperature: float = option(0.1, "softmax weighting temperature", range=POSITIVE)
    rescaler: Literal["mean_abs", "l1"] = option("mean_abs", "trigger rescaler: code's mean-abs ratio or global L1")
    prototype_text: Literal["mean", "normalized"] = option("mean",
        "text half: template mean as is (code) or re-normalised")
    prototype_images_from: Literal["train", "eval"] = option("train", "image half: training data + augmentation (code)")
    prototype_images: int | None = option(None, "images per experience used for prototypes (None = all)", range=COUNT)
    cache_models: int = option(4, "reconstructed task models kept in memory", range=COUNT)
