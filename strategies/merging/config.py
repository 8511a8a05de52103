"""Options of the merging baselines (docs/methods/merging.md): λ (``scaling``) and TIES's k, with sources.

- Task Arithmetic (Ilharco et al., ICLR 2023): θ = θ⁰ + λ·Σ_t δ_t. Default ``scaling: null`` = 1/t after t
  tasks, the mean of the task vectors: MagMax's code merges task arithmetic in continual learning with
  λ = 1/n (danielm1405/magmax@4f49f18, merge_splitted.py ``(sum, [1.0/n_splits])``); Ilharco et al. pick a
  fixed λ on held-out validation data, which a number here gives.
- TIES (Yadav et al., NeurIPS 2023): k = 20 (top 20% kept; prateeky2806/ties-merging README
  ``redundant = topk20``, and MagMax's code ``reset_thresh = 20``); λ = 0.55 (MagMax's code, TIES in
  continual learning with CLIP ViT-B/16: ``for scaling_coef in [0.55]``; the TIES README searches
  0.8–2.5 on validation data for T5).
- MagMax (Marczak et al., ECCV 2024): λ = 0.5 (MagMax's code ``(merge_max_abs, [0.5])``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..options import POSITIVE, Range, option

PERCENT = Range(0, 100, low_closed=False)  # (0, 100]


@dataclass
class TaskArithmeticConfig:
    scaling: float | None = option(None, "λ of θ⁰ + λ·Σδ; null: 1/t after t tasks (MagMax's code)", range=POSITIVE)


@dataclass
class TIESConfig:
    scaling: float = option(0.55, "λ of θ⁰ + λ·τ_TIES (MagMax's code for TIES)", range=POSITIVE)
    k: float = option(20.0, "percent of each task vector kept: its top-k% magnitudes over the whole model",
                      range=PERCENT)


@dataclass
class MagMaxConfig:
    scaling: float = option(0.5, "λ of θ⁰ + λ·τ_MagMax (MagMax's code)", range=POSITIVE)


MergingConfig = TaskArithmeticConfig | TIESConfig | MagMaxConfig


def check_run(run: Any) -> None:
    """The merging methods' fact about a suite run: they need trainable tensors (task vectors δ = θ − θ⁰)."""
    kind = run.model.units.kind
    if kind == "none":
        raise ValueError(f"model.units.kind = {kind}: {run.method.name} merges task vectors of trainable tensors; "
                         f"allowed: full, lora, adapter, moe")
