"""RAIL strategy: Avalanche's ``SupervisedTemplate`` plus :class:`RAILPlugin`, configured by keyword like
Avalanche's ``LwF(alpha=...)``. Nothing is trained by backpropagation: the experience's "training" is the
plugin's closed-form fit after it (``_train_exp`` does nothing, as :class:`strategies.baselines.ZeroShot`),
and this class's forward computes the fused scores from one image pass (docs/methods/rail.md).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..options import split_fields, with_options
from ..registry import EVALUATION_READS, MethodSpec, register
from ..training import template_kwargs
from .config import RAILConfig, check_run
from .plugin import RAILPlugin


class RAIL(SupervisedTemplate):
    """Regression-based analytic incremental learning of CLIP (Xu et al., NeurIPS 2024), training-free.

    ``RAIL(model, variant="dual", gamma=0.1, kernel_ridge=1e-3, fusion_weight=0.8, train_mb_size=128, ...)``:
    the method options are :class:`RAILConfig`'s fields with its defaults (the only copy); ``seed`` draws the
    primal projection; every other keyword goes to ``SupervisedTemplate`` (an unknown one raises
    ``TypeError`` naming it). No optimizer is needed (a placeholder one is made when none is given).
    """

    @with_options(RAILConfig)
    def __init__(self, model: CLIPClassifier, *, optimizer: torch.optim.Optimizer | None = None,
                 criterion: Any = None, plugins: list | None = None, seed: int = 0, **kwargs: Any) -> None:
        options, template_options = split_fields(RAILConfig, kwargs)
        self.rail = RAILPlugin(RAILConfig(**options), seed=seed)
        if optimizer is None:  # SupervisedTemplate needs one; RAIL never steps it
            optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(
            model=model, optimizer=optimizer,
            criterion=torch.nn.CrossEntropyLoss() if criterion is None else criterion,
            plugins=[*(plugins or []), self.rail], **template_options,
        )

    def _train_exp(self, experience: Any, eval_streams: Any = None, **kwargs: Any) -> None:
        return None  # training-free: RAILPlugin.after_training_exp fits the adapter in closed form

    def forward(self) -> Any:
        if not self.is_training:
            return self.rail.deliver(self.model, self.mb_x)
        return super().forward()


def build_rail(model: CLIPClassifier, cfg: RAILConfig, *, train: Any, plugins: list, evaluator: Any, device: Any,
               criterion: Any, seed: int = 0, **_: Any) -> RAIL:
    """The runner's builder: the public constructor with the run's minibatch sizes and method options."""
    return RAIL(model, criterion=criterion, seed=seed, **asdict(cfg),
                **template_kwargs(train, device, plugins, evaluator))


# The official config (configs/analytic_clip.yaml): batch 128, one pass of the training transform
# (RandomResizedCrop, scale 0.9-1; augmentation_time 1) over each domain's training data.
RECIPE = {"batch_size": 128, "epochs": 1, "augment": True}
# Training-free, but the closed-form fit reads the training data through the training transform
# (train.augment) in minibatches of train.batch_size (the RLS update order, float64 sums) with
# train.num_workers loader workers (their seeds draw the random crops): those fields, no optimizer ones.
READS = (*EVALUATION_READS, "train.batch_size", "train.augment", "train.num_workers")
register("rail", MethodSpec(RAILConfig, build_rail, trains=False, recipe=RECIPE, check=check_run, reads=READS))
