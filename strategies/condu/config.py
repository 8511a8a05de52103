"""ConDU's options (:class:`ConDUConfig`): inference route, aggregation and prototypes (ConDU §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ConDUConfig:
    inference: Literal["auto", "task_aware", "aggregated"] = "auto"  # auto: task-aware on task-incremental streams
    top_k: int = 4  # tasks aggregated per image (plus the pretrained model)
    weighting: Literal["uniform", "similarity", "softmax"] = "uniform"  # mixing of the selected models
    temperature: float = 0.1  # softmax weighting temperature
    rescaler: Literal["mean_abs", "l1"] = "mean_abs"  # trigger rescaler: code's mean-abs ratio or global L1
    prototype_text: Literal["mean", "normalized"] = "mean"  # text half: template mean as is (code) or re-normalised
    prototype_images_from: Literal["train", "eval"] = "train"  # image half: training data + augmentation (code)
    prototype_images: int | None = None  # images per experience used for prototypes (None = all)
    cache_models: int = 4  # reconstructed task models kept in memory
