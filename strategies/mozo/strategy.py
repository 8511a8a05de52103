"""MoZO strategy: Avalanche's ``SupervisedTemplate`` plus :class:`MoZOPlugin`, configured by keyword.

``MoZO(model, optimizer, criterion, branch="dual", layers="hop-even", eps_vision=5e-4,
train_mb_size=128, ...)`` like Avalanche's ``LwF(..., alpha=...)``: every :class:`MoZOConfig` field is
a keyword argument; every other keyword goes to ``SupervisedTemplate``. The optimizer may be built over all
of the model's parameters before the strategy: the ZO units leave autograd at ``before_training``
and the ZO step size follows the optimizer's lr (no lr is passed twice). The runner builds MoZO
through this same constructor (:func:`build_mozo`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..registry import MethodSpec, register
from ..training import make_optimizer
from .config import CONFIG_FIELDS, MoZOConfig
from .plugin import MoZOPlugin


class MoZO(SupervisedTemplate):
    """Hybrid zeroth-/first-order training of CLIP units (arXiv 2506.12409); a thin wrapper that adds
    :class:`MoZOPlugin` (the method's mechanics live there, so ``Naive`` + the plugin is the same).

    The keyword options are :class:`MoZOConfig`'s fields with its defaults (a test keeps them equal);
    ``seed`` seeds the plugin's direction / model seeds; the rest goes to ``SupervisedTemplate``.
    """

    def __init__(
        self,
        model: CLIPClassifier,
        optimizer: torch.optim.Optimizer,
        criterion: Any = None,
        *,
        branch: Literal["dual", "vision", "language", "none"] = "dual",
        layers: str | list[int] = "hop-even",
        one_based: bool = True,
        eps_language: float = 1e-3,
        eps_vision: float = 5e-4,
        vision_perturbation: Literal["joint", "per_tower", "scaled"] = "per_tower",
        zo_lr: float | None = None,
        queries: int = 1,
        two_sided: bool = True,
        sign: Literal["scalar", "elementwise", "none"] = "scalar",
        candidate: Literal["conservative", "aggressive", "probe"] = "conservative",
        mix: float = 1.0,
        zo_weight_decay: float = 0.0,
        penalties: bool = True,
        log_every: int = 1,
        probe_precision: Literal["fp32", "train"] = "fp32",
        cache_directions: bool = True,
        seed: int = 0,
        plugins: list | None = None,
        **kwargs: Any,
    ) -> None:
        cfg = MoZOConfig(branch=branch, layers=layers, one_based=one_based, eps_language=eps_language,
                         eps_vision=eps_vision, vision_perturbation=vision_perturbation, zo_lr=zo_lr,
                         queries=queries, two_sided=two_sided, sign=sign, candidate=candidate, mix=mix,
                         zo_weight_decay=zo_weight_decay, penalties=penalties, log_every=log_every,
                         probe_precision=probe_precision, cache_directions=cache_directions)
        self.mozo = MoZOPlugin(cfg, seed=seed)
        criterion = torch.nn.CrossEntropyLoss() if criterion is None else criterion
        super().__init__(model=model, optimizer=optimizer, criterion=criterion,
                         plugins=[*(plugins or []), self.mozo], **kwargs)


def build_mozo(model: CLIPClassifier, cfg: MoZOConfig, *, train: Any, plugins: list, evaluator: Any,
               device: Any, criterion: Any, seed: int = 0, **_: Any) -> MoZO:
    """The runner's builder: the public constructor with the run's recipe and method options."""
    return MoZO(
        model, make_optimizer(model, train), criterion, **{f: getattr(cfg, f) for f in CONFIG_FIELDS},
        seed=seed, train_mb_size=train.batch_size, train_epochs=train.epochs,
        eval_mb_size=train.eval_batch_size, device=device, plugins=plugins, evaluator=evaluator, eval_every=-1,
    )


# MoE-Adapters4CL's FO recipe, which MoZO keeps (mozo.md): AdamW 1e-3, cosine with 30 warm-up iterations,
# 1 epoch per task, batch 128, no augmentation.
RECIPE = {"lr": 1e-3, "warmup": 30, "schedule": "cosine", "epochs": 1, "batch_size": 128, "augment": False}
register("mozo", MethodSpec(MoZOConfig, build_mozo, recipe=RECIPE))
