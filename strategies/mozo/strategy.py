"""MoZO strategy: Avalanche's ``SupervisedTemplate`` plus :class:`MoZOPlugin`, configured by keyword.

``MoZO(model, optimizer, criterion, branch="dual", layers="hop-even", eps_vision=5e-4,
train_mb_size=128, ...)`` like Avalanche's ``LwF(..., alpha=...)``: every :class:`MoZOConfig` field is
a keyword argument; every other keyword goes to ``SupervisedTemplate``. The optimizer may be built over all
of the model's parameters before the strategy: the ZO units leave autograd at ``before_training``
and the ZO step size follows the optimizer's lr (no lr is passed twice). The runner builds MoZO
through this same constructor (:func:`build_mozo`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..options import split_fields, with_options
from ..registry import MethodSpec, register
from ..training import make_optimizer, template_kwargs
from .config import MoZOConfig, check_run
from .plugin import MoZOPlugin


class MoZO(SupervisedTemplate):
    """Hybrid zeroth-/first-order training of CLIP units (arXiv 2506.12409); a thin wrapper that adds
    :class:`MoZOPlugin` (the method's mechanics live there, so ``Naive`` + the plugin is the same).

    The keyword options are :class:`MoZOConfig`'s fields, with its defaults (the only copy);
    ``seed`` seeds the plugin's direction / model seeds; every other keyword goes to
    ``SupervisedTemplate`` (an unknown one raises ``TypeError`` naming it).
    """

    @with_options(MoZOConfig)
    def __init__(self, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None, *,
                 plugins: list | None = None, seed: int = 0, **kwargs: Any) -> None:
        options, template_options = split_fields(MoZOConfig, kwargs)
        self.mozo = MoZOPlugin(MoZOConfig(**options), seed=seed)
        criterion = torch.nn.CrossEntropyLoss() if criterion is None else criterion
        super().__init__(model=model, optimizer=optimizer, criterion=criterion,
                         plugins=[*(plugins or []), self.mozo], **template_options)


def build_mozo(model: CLIPClassifier, cfg: MoZOConfig, *, train: Any, plugins: list, evaluator: Any,
               device: Any, criterion: Any, seed: int = 0, **_: Any) -> MoZO:
    """The runner's builder: the public constructor with the run's recipe and method options."""
    return MoZO(model, make_optimizer(model, train), criterion, **asdict(cfg), seed=seed,
                **template_kwargs(train, device, plugins, evaluator))


# MoE-Adapters4CL's FO recipe, which MoZO keeps (mozo.md): AdamW 1e-3, cosine with 30 warm-up iterations,
# 1 epoch per task, batch 128, no augmentation.
RECIPE = {"lr": 1e-3, "warmup": 30, "schedule": "cosine", "epochs": 1, "batch_size": 128, "augment": False}
register("mozo", MethodSpec(MoZOConfig, build_mozo, recipe=RECIPE, check=check_run))
