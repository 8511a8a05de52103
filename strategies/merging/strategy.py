"""The merging baselines as strategies: Avalanche's ``SupervisedTemplate`` plus :class:`MergingPlugin`,
configured by keyword like Avalanche's ``LwF(alpha=...)`` (docs/methods/merging.md). The plugin holds
the whole method, so ``Naive(..., plugins=[MergingPlugin(model, TIESConfig())])`` trains the same.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..condu.strategy import RECIPE as CONDU_RECIPE
from ..options import split_fields, with_options
from ..registry import MethodSpec, register
from ..training import make_optimizer, template_kwargs
from .config import MagMaxConfig, MergingConfig, TaskArithmeticConfig, TIESConfig, check_run
from .plugin import MergingPlugin


def _init(strategy: SupervisedTemplate, config: type, model: CLIPClassifier, optimizer: torch.optim.Optimizer,
          criterion: Any, plugins: list | None, kwargs: dict[str, Any]) -> None:
    options, template_options = split_fields(config, kwargs)
    strategy.merging = MergingPlugin(model, config(**options))
    SupervisedTemplate.__init__(
        strategy, model=model, optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss() if criterion is None else criterion,
        plugins=[*(plugins or []), strategy.merging], **template_options,
    )


class TaskArithmetic(SupervisedTemplate):
    """Task Arithmetic (Ilharco et al., ICLR 2023): each task fine-tuned from θ⁰, merged θ⁰ + λ·Σδ.

    ``TaskArithmetic(model=..., optimizer=..., scaling=None, ...)``: the options are
    :class:`TaskArithmeticConfig`'s fields with its defaults; every other keyword goes to
    ``SupervisedTemplate`` (an unknown one raises ``TypeError`` naming it).
    """

    merging: MergingPlugin

    @with_options(TaskArithmeticConfig)
    def __init__(self, *, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None,
                 plugins: list | None = None, **kwargs: Any) -> None:
        _init(self, TaskArithmeticConfig, model, optimizer, criterion, plugins, kwargs)


class TIES(SupervisedTemplate):
    """TIES-Merging (Yadav et al., NeurIPS 2023): each task fine-tuned from θ⁰; trim (top-k% of each task
    vector over the whole model), elect signs, disjoint mean, θ⁰ + λ·τ. Options: :class:`TIESConfig`."""

    merging: MergingPlugin

    @with_options(TIESConfig)
    def __init__(self, *, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None,
                 plugins: list | None = None, **kwargs: Any) -> None:
        _init(self, TIESConfig, model, optimizer, criterion, plugins, kwargs)


class MagMax(SupervisedTemplate):
    """MagMax (Marczak et al., ECCV 2024): sequential fine-tuning, per-parameter max-|δ| of the task
    vectors relative to θ⁰, θ⁰ + λ·τ. Options: :class:`MagMaxConfig`."""

    merging: MergingPlugin

    @with_options(MagMaxConfig)
    def __init__(self, *, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None,
                 plugins: list | None = None, **kwargs: Any) -> None:
        _init(self, MagMaxConfig, model, optimizer, criterion, plugins, kwargs)


STRATEGIES: dict[type, type[SupervisedTemplate]] = {
    TaskArithmeticConfig: TaskArithmetic, TIESConfig: TIES, MagMaxConfig: MagMax}


def build_merging(model: CLIPClassifier, cfg: MergingConfig, *, train: Any, plugins: list, evaluator: Any,
                  device: Any, criterion: Any, **_: Any) -> SupervisedTemplate:
    """The runner's builder: the public constructor of ``cfg``'s method with the run's recipe."""
    return STRATEGIES[type(cfg)](model=model, optimizer=make_optimizer(model, train), criterion=criterion,
                                 **asdict(cfg), **template_kwargs(train, device, plugins, evaluator))


# Each task is fine-tuned as ConDU fine-tunes it (the comparison of ConDU's table): ConDU's recipe.
RECIPE = dict(CONDU_RECIPE)
register("task-arithmetic", MethodSpec(TaskArithmeticConfig, build_merging, recipe=RECIPE, check=check_run))
register("ties", MethodSpec(TIESConfig, build_merging, recipe=RECIPE, check=check_run))
register("magmax", MethodSpec(MagMaxConfig, build_merging, recipe=RECIPE, check=check_run))
