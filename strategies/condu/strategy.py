"""ConDU strategy: Avalanche's ``SupervisedTemplate`` plus :class:`ConDUPlugin`, configured by keyword
like Avalanche's ``LwF(alpha=...)``. The plugin holds the whole method (sessions and prediction), so
``Naive(..., plugins=[ConDUPlugin(model, ...)])`` predicts the same; this class only adds the plugin
and computes the aggregated logits in its forward (one plain forward fewer per evaluation minibatch).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..registry import MethodSpec, register
from ..training import make_optimizer
from .config import ConDUConfig
from .plugin import ConDUPlugin

_DEFAULT = ConDUConfig()


class ConDU(SupervisedTemplate):
    """Continual decoupling-unifying with prototype-aggregated prediction (arXiv 2503.10705).

    ``ConDU(model=..., optimizer=..., criterion=..., top_k=4, inference="aggregated", ...)``; the
    method options are :class:`ConDUConfig`'s fields, every other keyword goes to
    ``SupervisedTemplate`` (``train_mb_size``, ``eval_every``, ``evaluator``, ...).
    """

    def __init__(
        self, *, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None,
        inference: str = _DEFAULT.inference, top_k: int = _DEFAULT.top_k, weighting: str = _DEFAULT.weighting,
        temperature: float = _DEFAULT.temperature, rescaler: str = _DEFAULT.rescaler,
        prototype_text: str = _DEFAULT.prototype_text, prototype_images_from: str = _DEFAULT.prototype_images_from,
        prototype_images: int | None = _DEFAULT.prototype_images, cache_models: int = _DEFAULT.cache_models,
        plugins: list | None = None, **base_kwargs: Any,
    ) -> None:
        self.condu = ConDUPlugin(
            model, inference=inference, top_k=top_k, weighting=weighting, temperature=temperature,
            rescaler=rescaler, prototype_text=prototype_text, prototype_images_from=prototype_images_from,
            prototype_images=prototype_images, cache_models=cache_models,
        )
        super().__init__(
            model=model, optimizer=optimizer,
            criterion=torch.nn.CrossEntropyLoss() if criterion is None else criterion,
            plugins=[*(plugins or []), self.condu], **base_kwargs,
        )

    def forward(self) -> Any:
        if not self.is_training and self.condu.aggregating:
            return self.condu.deliver(self.model, self.mb_x)
        return super().forward()


def build_condu(model: CLIPClassifier, cfg: ConDUConfig, *, train: Any, plugins: list, evaluator: Any,
                device: Any, criterion: Any, benchmark: Any, task_aware: bool = False, **_: Any) -> ConDU:
    """The runner's builder: the public constructor, with ``inference: auto`` resolved to task-aware
    where the run says so (``eval.task_aware``, or a benchmark with the ``task`` protocol)."""
    options = asdict(cfg)
    if cfg.inference == "auto" and (task_aware or getattr(benchmark, "protocol", None) == "task"):
        options["inference"] = "task_aware"
    return ConDU(
        model=model, optimizer=make_optimizer(model, train), criterion=criterion, **options,
        train_mb_size=train.batch_size, train_epochs=train.epochs, eval_mb_size=train.eval_batch_size,
        device=device, plugins=plugins, evaluator=evaluator, eval_every=-1,
    )


# ConDU's code recipe (condu.md "Per task"): label smoothing 0.2, AdamW wd 0, cosine with 100 warm-up
# steps, 1000 iterations, batch 64, lr 1e-5 (full fine-tuning; MTIL uses 5e-5 for Aircraft and MNIST).
RECIPE = {"label_smoothing": 0.2, "weight_decay": 0.0, "warmup": 100, "iterations": 1000, "batch_size": 64,
          "lr": 1e-5, "augment": True}
register("condu", MethodSpec(ConDUConfig, build_condu, recipe=RECIPE))
