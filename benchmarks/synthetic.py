"""A small synthetic class-incremental stream for tests and smoke runs (no files, no download).

Each class owns a fixed random image pattern; a sample is ``signal * pattern[c] + noise``, so a
model can learn the classes and forgetting is measurable. Images are tensors at the model's input
size, already normalised-looking, so no PIL transform is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from strategies.options import COUNT, option

from .base import CLIPBenchmark, StreamContext
from .common import build_class_incremental
from .templates import class_incremental_templates

_NAMES = (
    "apple", "bicycle", "cloud", "dolphin", "engine", "forest", "guitar", "harbor", "island", "jacket",
    "kettle", "lantern", "mountain", "needle", "orchid", "pepper", "quilt", "river", "saddle", "tractor",
)


@dataclass
class SyntheticStreamConfig:
    n_classes: int = option(10, "total classes (class names cycle through a small vocabulary)", range=COUNT)
    n_experiences: int = option(5, "experiences; n_classes must divide evenly", range=COUNT)
    train_per_class: int = option(32, "training images per class", range=COUNT)
    test_per_class: int = option(16, "test images per class", range=COUNT)
    signal: float = option(1.5, "strength of the class pattern relative to unit Gaussian noise")
    seed: int = option(0, "seed of the patterns, the samples and the class order")
    train_templates: str | list[str] = option(default_factory=lambda: ["a photo of a {}."], help="training prompts")
    eval_templates: str | list[str] = option(default_factory=lambda: ["a photo of a {}."], help="evaluation prompts")


class TensorClassDataset(Dataset):
    """Images and integer targets held in memory; exposes ``.targets`` as Avalanche expects."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images = images
        self.targets = targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


def _draw(patterns: torch.Tensor, per_class: int, signal: float, gen: torch.Generator) -> TensorClassDataset:
    n_classes = patterns.shape[0]
    targets = torch.arange(n_classes).repeat_interleave(per_class)  # (N,)
    noise = torch.randn((len(targets), *patterns.shape[1:]), generator=gen)  # (N, 3, H, W)
    return TensorClassDataset(signal * patterns[targets] + noise, targets)


def class_names(n_classes: int) -> list[str]:
    """Distinct names: the vocabulary, then the vocabulary with a numeric suffix."""
    return [_NAMES[i % len(_NAMES)] + ("" if i < len(_NAMES) else f" {i // len(_NAMES)}") for i in range(n_classes)]


def check_synthetic(cfg: SyntheticStreamConfig) -> None:
    """What can be checked without data: the classes divide into the experiences."""
    if cfg.n_classes % cfg.n_experiences:
        raise ValueError(f"synthetic stream: n_classes={cfg.n_classes} is not divisible by "
                         f"n_experiences={cfg.n_experiences}")
    class_incremental_templates(cfg, "synthetic")


def build_synthetic(cfg: SyntheticStreamConfig, ctx: StreamContext) -> CLIPBenchmark:
    """Class-incremental stream of ``cfg.n_experiences`` equal steps over random-pattern classes."""
    check_synthetic(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    size = ctx.image_size
    patterns = torch.randn((cfg.n_classes, 3, size, size), generator=gen)  # (C, 3, H, W)
    train = _draw(patterns, cfg.train_per_class, cfg.signal, gen)
    test = _draw(patterns, cfg.test_per_class, cfg.signal, gen)
    order = torch.randperm(cfg.n_classes, generator=gen).tolist()
    sizes = [cfg.n_classes // cfg.n_experiences] * cfg.n_experiences
    tensors_ctx = replace(ctx, train_transform=None, eval_transform=None)  # samples are tensors already
    return build_class_incremental("synthetic", train, test, order, sizes, class_names(cfg.n_classes),
                                   class_incremental_templates(cfg, "synthetic"), tensors_ctx)
