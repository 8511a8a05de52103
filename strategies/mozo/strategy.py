"""MoZO strategy: Avalanche's ``SupervisedTemplate`` plus :class:`MoZOPlugin`, configured by keyword.

``MoZO(model, optimizer, criterion, branch="dual", layers="hop-even", eps_vision=5e-4,
train_mb_size=128, ...)`` like Avalanche's ``LwF(..., alpha=...)``: every :class:`MoZOConfig` field is
a keyword; every other keyword goes to ``SupervisedTemplate``. The optimizer may be built over all
of the model's parameters before the strategy: the ZO units leave autograd at ``before_training``
and the ZO step size follows the optimizer's lr (no lr is passed twice). The runner builds MoZO
through this same constructor (:func:`build_mozo`).
"""

from __future__ import annotations

from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..registry import MethodSpec, register
from ..training import make_optimizer
from .plugin import CONFIG_FIELDS, MoZOConfig, MoZOPlugin


class MoZO(SupervisedTemplate):
    """Hybrid zeroth-/first-order training of CLIP units (arXiv 2506.12409); a thin wrapper that adds
    :class:`MoZOPlugin` (the method's mechanics live there, so ``Naive`` + the plugin is the same)."""

    def __init__(self, model: CLIPClassifier, optimizer: torch.optim.Optimizer,
                 criterion: Any = None, *, mozo_cfg: MoZOConfig | None = None, seed: int = 0,
                 plugins: list | None = None, **kwargs: Any) -> None:
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in CONFIG_FIELDS}
        self.mozo = MoZOPlugin(mozo_cfg, seed=seed, **options)
        criterion = torch.nn.CrossEntropyLoss() if criterion is None else criterion
        super().__init__(model=model, optimizer=optimizer, criterion=criterion,
                         plugins=[*(plugins or []), self.mozo], **kwargs)


def build_mozo(model: CLIPClassifier, cfg: MoZOConfig, *, train: Any, plugins: list, evaluator: Any,
               device: Any, criterion: Any, seed: int = 0, **_: Any) -> MoZO:
    """The runner's builder: the public constructor with the run's recipe."""
    return MoZO(
        model, make_optimizer(model, train), criterion, mozo_cfg=cfg, seed=seed,
        train_mb_size=train.batch_size, train_epochs=train.epochs, eval_mb_size=train.eval_batch_size,
        device=device, plugins=plugins, evaluator=evaluator, eval_every=-1,
    )


# MoE-Adapters4CL's FO recipe, which MoZO keeps (mozo.md): AdamW 1e-3, cosine with 30 warm-up iterations,
# 1 epoch per task, batch 128, no augmentation.
RECIPE = {"lr": 1e-3, "warmup": 30, "schedule": "cosine", "epochs": 1, "batch_size": 128, "augment": False}
register("mozo", MethodSpec(MoZOConfig, build_mozo, recipe=RECIPE))
