"""MoE-Adapters strategy: Avalanche's ``SupervisedTemplate`` plus :class:`MoEAdaptersPlugin`, configured by
keyword like Avalanche's ``LwF(alpha=...)`` (docs/methods/moe_adapters.md).

``MoEAdapters(model, optimizer, criterion, routers="per_task", freeze_top=2, ddas={"enabled": True},
tasks=11, train_mb_size=64, ...)``: every :class:`MoEAdaptersConfig` field is a keyword argument (``ddas`` a
:class:`DDASConfig` or a dict of its fields); every other keyword goes to ``SupervisedTemplate``. ``tasks``
sizes the router bank before the optimizer is built (``routers: per_task``). Training is plain first-order
training, so the class-incremental recipe is the same computation as MoZO with ``branch: none``.
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
from .config import MoEAdaptersConfig, check_run
from .plugin import MoEAdaptersPlugin


class MoEAdapters(SupervisedTemplate):
    """MoE-Adapters4CL (Yu et al., CVPR 2024): mixture-of-adapters units, router per task, activate-freeze
    and the DDAS task selector; a thin wrapper that adds :class:`MoEAdaptersPlugin` and, with DDAS, scores
    evaluation minibatches through it.

    ``seed`` seeds the autoencoders' data order; ``data_root`` / ``download`` locate DDAS's domain-0 images.
    Build the optimizer after the strategy when ``routers: per_task`` (the bank's routers are new
    parameters), or let Avalanche's per-experience reset pick them up (it does).
    """

    @with_options(MoEAdaptersConfig)
    def __init__(self, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None, *,
                 plugins: list | None = None, seed: int = 0, tasks: int | None = None, data_root: str = "data",
                 download: bool = False, **kwargs: Any) -> None:
        options, template_options = split_fields(MoEAdaptersConfig, kwargs)
        self.moe = MoEAdaptersPlugin(MoEAdaptersConfig(**options), seed=seed, data_root=data_root,
                                     download=download)
        self.moe.prepare(model, tasks)
        criterion = torch.nn.CrossEntropyLoss() if criterion is None else criterion
        super().__init__(model=model, optimizer=optimizer, criterion=criterion,
                         plugins=[*(plugins or []), self.moe], **template_options)

    def forward(self) -> Any:
        if not self.is_training and self.moe.cfg.ddas.enabled:
            return self.moe.deliver(self.model, self.mb_x)
        return super().forward()


def build_moe_adapters(model: CLIPClassifier, cfg: MoEAdaptersConfig, *, train: Any, plugins: list,
                       evaluator: Any, device: Any, criterion: Any, benchmark: Any = None, seed: int = 0,
                       data_root: str = "data", download: bool = False, **_: Any) -> MoEAdapters:
    """The runner's builder: the public constructor with the run's recipe, its number of tasks (router
    bank) and data root (DDAS's domain 0). The router bank is grown before the optimizer is made."""
    tasks = benchmark.n_experiences if benchmark is not None else None
    if cfg.routers == "per_task" and tasks:
        MoEAdaptersPlugin(cfg).prepare(model, tasks)
    return MoEAdapters(model, make_optimizer(model, train), criterion, **asdict(cfg), seed=seed, tasks=tasks,
                       data_root=data_root, download=download, **template_kwargs(train, device, plugins, evaluator))


# cil/configs/class/*.yaml: AdamW lr 1e-3, wd 0, cosine with 30 warm-up iterations, 1 epoch, batch 128 (CIFAR
# 10/20 steps; 64 for 50 steps and TinyImageNet: set in the suite), no augmentation, no label smoothing.
RECIPE = {"lr": 1e-3, "warmup": 30, "schedule": "cosine", "epochs": 1, "batch_size": 128, "augment": False,
          "weight_decay": 0.0, "label_smoothing": 0.0}
register("moe-adapters", MethodSpec(MoEAdaptersConfig, build_moe_adapters, recipe=RECIPE, check=check_run))
