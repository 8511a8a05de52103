"""MoZO strategy: Avalanche's ``SupervisedTemplate`` plus :class:`MoZOPlugin`.

The only change to the template's update is that backward and the FO optimizer step are skipped
when no unit is first-order (Dual/all-layer ZO): then the forward builds no autograd graph at all.
"""

from __future__ import annotations

from typing import Any

from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..registry import MethodSpec, register
from ..training import make_optimizer
from .plugin import MoZOConfig, MoZOPlugin


class MoZO(SupervisedTemplate):
    """Hybrid zeroth-/first-order training of CLIP units (arXiv 2506.12409)."""

    def __init__(self, *, model: CLIPClassifier, mozo: MoZOPlugin, plugins: list | None = None,
                 **kwargs: Any) -> None:
        self.mozo = mozo
        super().__init__(model=model, plugins=[*(plugins or []), mozo], **kwargs)

    def backward(self) -> None:
        if self.loss.requires_grad:
            super().backward()

    def optimizer_step(self) -> None:
        if self.mozo.fo_keys or any(p.requires_grad for p in self.model.parameters()):
            super().optimizer_step()


def build_mozo(model: CLIPClassifier, cfg: MoZOConfig, *, train: Any, plugins: list, evaluator: Any,
               device: Any, criterion: Any, seed: int = 0, **_: Any) -> MoZO:
    plugin = MoZOPlugin(model, cfg, base_lr=train.lr, seed=seed)  # partitions before the optimizer is built
    return MoZO(
        model=model, mozo=plugin, optimizer=make_optimizer(model, train), criterion=criterion,
        train_mb_size=train.batch_size, train_epochs=train.epochs, eval_mb_size=train.eval_batch_size,
        device=device, plugins=plugins, evaluator=evaluator, eval_every=-1,
    )


# MoE-Adapters4CL's FO recipe, which MoZO keeps (mozo.md): AdamW 1e-3, cosine with 30 warm-up iterations,
# 1 epoch per task, batch 128, no augmentation.
RECIPE = {"lr": 1e-3, "warmup": 30, "schedule": "cosine", "epochs": 1, "batch_size": 128, "augment": False}
register("mozo", MethodSpec(MoZOConfig, build_mozo, recipe=RECIPE))
