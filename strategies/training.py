"""What every strategy shares: the training recipe config and the plugins that apply it.

- :class:`LabelSpacePlugin` sets the classifier's active classes per experience (DESIGN: one label
  space for every protocol).
- :class:`RecipePlugin` restricts the optimizer to trainable parameters, resets its state per
  experience, applies warm-up + cosine learning-rate schedule per iteration, and stops an
  experience after ``iterations`` steps when the recipe counts iterations instead of epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from avalanche.core import SupervisedPlugin

from benchmarks.base import CLIPBenchmark

from .clip import CLIPClassifier


@dataclass
class TrainConfig:
    epochs: int = 1  # passes over each experience's training set (ignored when iterations is set)
    iterations: int | None = None  # exact optimizer steps per experience (ConDU's recipe: 1000)
    batch_size: int = 32  # training minibatch size
    eval_batch_size: int = 64  # evaluation minibatch size
    optimizer: Literal["adamw", "sgd"] = "adamw"  # first-order optimizer of trainable parameters
    lr: float = 1e-3  # peak learning rate
    lr_by_experience: dict[str, float] = field(default_factory=dict)  # experience name -> peak lr (MTIL)
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) / L2 (SGD)
    momentum: float = 0.9  # SGD momentum
    warmup: int = 30  # linear warm-up iterations at the start of every experience
    schedule: Literal["cosine", "constant"] = "cosine"  # learning rate after warm-up
    label_smoothing: float = 0.0  # cross-entropy label smoothing (ConDU uses 0.2)
    label_space: Literal["auto", "current", "seen"] = "auto"  # classes scored in training; auto: per method
    augment: bool = False  # train with open_clip's training transform instead of the eval transform
    num_workers: int = 0  # DataLoader workers
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: CLIPClassifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer over the model's trainable parameters (the frozen backbone is left out)."""
    params = model.trainable_parameters() or [torch.nn.Parameter(torch.zeros(1))]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LabelSpacePlugin(SupervisedPlugin):
    """Sets the active classes before each training and evaluation experience.

    Training scores the current experience's classes (``current``) or every class seen so far
    (``seen``). Evaluation of experience ``j`` scores, for the ``seen`` protocol, every class seen
    in training so far plus experience ``j``'s own classes (so experiences not yet trained on are
    scored zero-shot over seen + their classes), and for the ``task`` protocol (or
    ``task_aware=True``) experience ``j``'s classes only.
    """

    def __init__(self, benchmark: CLIPBenchmark, train_label_space: str, task_aware: bool = False) -> None:
        super().__init__()
        self.benchmark = benchmark
        self.train_label_space = train_label_space
        self.task_aware = task_aware or benchmark.protocol == "task"
        self.seen: set[int] = set()

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        own = self.benchmark.experience_classes[strategy.experience.current_experience]
        self.seen.update(own)
        strategy.model.set_active_classes(sorted(self.seen) if self.train_label_space == "seen" else own)

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        own = self.benchmark.experience_classes[strategy.experience.current_experience]
        strategy.model.set_active_classes(own if self.task_aware else sorted(self.seen | set(own)))

    def state_dict(self) -> dict[str, Any]:
        return {"seen": sorted(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = set(state["seen"])


class RecipePlugin(SupervisedPlugin):
    """Trainable-only optimizer, fresh optimizer state and LR schedule per experience, iteration cap."""

    def __init__(self, cfg: TrainConfig, experience_names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.experience_names = experience_names or []
        unknown = sorted(set(cfg.lr_by_experience) - set(self.experience_names))
        if unknown:
            raise ValueError(f"train.lr_by_experience: unknown experiences {unknown}; "
                             f"allowed: {', '.join(self.experience_names)}")
        self.step = 0
        self.total = 0
        self.peak_lr = cfg.lr

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # Avalanche's make_optimizer (run just before) puts every parameter, frozen ones too, in the
        # single param group; keep the trainable ones and start each experience with fresh state.
        group = strategy.optimizer.param_groups[0]
        group["params"] = [p for p in group["params"] if p.requires_grad] or group["params"][:1]
        strategy.optimizer.state.clear()
        self.step = 0
        index = strategy.experience.current_experience
        name = self.experience_names[index] if index < len(self.experience_names) else ""
        self.peak_lr = self.cfg.lr_by_experience.get(name, self.cfg.lr)
        batches = len(strategy.dataloader)
        if batches == 0:
            raise ValueError(f"experience {strategy.experience.current_experience} has no training data")
        self.total = self.cfg.iterations or self.cfg.epochs * batches
        if self.cfg.iterations is not None:  # enough epochs to reach the cap, read by Avalanche's loop
            strategy.train_epochs = math.ceil(self.cfg.iterations / batches)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        factor = lr_factor(self.step, self.total, self.cfg.warmup, self.cfg.schedule)
        for group in strategy.optimizer.param_groups:
            group["lr"] = self.peak_lr * factor

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.step += 1
        if self.cfg.iterations is not None and self.step >= self.cfg.iterations:
            strategy.stop_training()
