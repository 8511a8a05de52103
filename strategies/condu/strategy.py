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
from ..options import split_fields, with_options
from ..registry import MethodSpec, register
from ..training import make_optimizer, template_kwargs
from .config import ConDUConfig
from .plugin import ConDUPlugin


class ConDU(SupervisedTemplate):
    """Continual decoupling-unifying with prototype-aggregated prediction (arXiv 2503.10705).

    ``ConDU(model=..., optimizer=..., criterion=..., top_k=4, inference="aggregated", ...)``; the
    method options are :class:`ConDUConfig`'s fields with its defaults (the only copy), every other
    keyword goes to ``SupervisedTemplate`` (``train_mb_size``, ``eval_every``, ``evaluator``, ...; an
    unknown one raises ``TypeError`` naming it).
    """

    @with_options(ConDUConfig)
    def __init__(self, *, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None,
                 plugins: list | None = None, **kwargs: Any) -> None:
        options, template_options = split_fields(ConDUConfig, kwargs)
        self.condu = ConDUPlugin(model, **options)
        super().__init__(
            model=model, optimizer=optimizer,
            criterion=torch.nn.CrossEntropyLoss() if criterion is None else criterion,
            plugins=[*(plugins or []), self.condu], **template_options,
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
    return ConDU(model=model, optimizer=make_optimizer(model, train), criterion=criterion, **options,
                 **template_kwargs(train, device, plugins, evaluator))


# ConDU's code recipe (condu.md "Per task"): label smoothing 0.2, AdamW wd 0, cosine with 100 warm-up
# steps, 1000 iterations, batch 64, lr 1e-5 (full fine-tuning; MTIL uses 5e-5 for Aircraft and MNIST).
RECIPE = {"label_smoothing": 0.2, "weight_decay": 0.0, "warmup": 100, "iterations": 1000, "batch_size": 64,
          "lr": 1e-5, "augment": True}
register("condu", MethodSpec(ConDUConfig, build_condu, recipe=RECIPE))
