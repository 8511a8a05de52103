"""The ZSCL trainer as an Avalanche strategy, and the family's registered presets (docs/methods/zscl.md).

``ZSCL(model, optimizer, criterion, teacher="pretrained", image_weight=1.0, ..., train_mb_size=64)``
is ``SupervisedTemplate`` + :class:`ZSCLPlugin`: every :class:`ZSCLConfig` field is a keyword option, every
other keyword goes to ``SupervisedTemplate``. ``ZSCL.from_preset("lwf-vr", model, optimizer, ...)`` starts
from a preset's options. Each preset is registered under its name (``zscl``, ``lwf-clip``, ``lwf-vr``,
``wise-ft``, ``wc``, ``we``, ``icarl-clip``, ``continual-ft``, ``zscl-cil``) with its own config dataclass
(:data:`~.config.PRESET_CONFIGS`: the preset's values as field defaults) and the same builder, which calls
this public constructor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate

from ..clip import CLIPClassifier
from ..options import split_fields, with_options
from ..registry import MethodSpec, register
from ..training import make_optimizer, template_kwargs
from .config import PRESET_CONFIGS, PRESET_HELP, PRESETS, ZSCLConfig, check_run
from .plugin import ZSCLPlugin


class ZSCL(SupervisedTemplate):
    """Full fine-tuning of CLIP with ZSCL's composable terms (Zheng et al., ICCV 2023); a thin wrapper
    that adds :class:`ZSCLPlugin` (``Naive`` + the plugin is the same). The defaults are
    :class:`ZSCLConfig`'s (the only copy): no term, i.e. Continual-FT."""

    @with_options(ZSCLConfig)
    def __init__(self, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None, *,
                 plugins: list | None = None, seed: int = 0, transform: Any = None, **kwargs: Any) -> None:
        options, template_options = split_fields(ZSCLConfig, kwargs)
        self.zscl = ZSCLPlugin(seed=seed, transform=transform, **options)
        criterion = torch.nn.CrossEntropyLoss() if criterion is None else criterion
        super().__init__(model=model, optimizer=optimizer, criterion=criterion,
                         plugins=[*(plugins or []), self.zscl], **template_options)

    @classmethod
    def from_preset(cls, name: str, model: CLIPClassifier, optimizer: torch.optim.Optimizer, criterion: Any = None,
                    **kwargs: Any) -> ZSCL:
        """The strategy with preset ``name``'s options (:data:`~.config.PRESETS`); ``kwargs`` on top."""
        if name not in PRESETS:
            raise ValueError(f"ZSCL preset {name!r}; allowed: {', '.join(PRESETS)}")
        return cls(model=model, optimizer=optimizer, criterion=criterion, **{**PRESETS[name], **kwargs})


def options_of(cfg: ZSCLConfig) -> dict[str, Any]:
    """The config's fields as keyword options (``reference`` stays a :class:`ReferenceConfig`)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


def build_zscl(model: CLIPClassifier, cfg: ZSCLConfig, *, train: Any, plugins: list, evaluator: Any, device: Any,
               criterion: Any, seed: int = 0, **_: Any) -> ZSCL:
    """The runner's builder for every preset: the public constructor with the run's recipe and options."""
    return ZSCL(model=model, optimizer=make_optimizer(model, train), criterion=criterion, **options_of(cfg), seed=seed,
                **template_kwargs(train, device, plugins, evaluator))


# ZSCL's MTIL trainer (mtil/scripts/*.sh, mtil/src/args.py): --ls 0.2, --iterations 1000, batch 64 (args.py
# l.11), AdamW wd 0 (l.14), cosine with 100 warm-up iterations (l.16), lr 1e-5 (5e-5 for Aircraft and MNIST:
# the scripts' lr arrays, set per dataset in the suites), RandomResizedCrop(0.9, 1) training transform
# (mtil/clip/clip.py::_transform). Units: `full` (--train-mode=whole; logit_scale frozen).
RECIPE = {"label_smoothing": 0.2, "weight_decay": 0.0, "warmup": 100, "iterations": 1000, "batch_size": 64,
          "lr": 1e-5, "augment": True}
# The class-incremental code (cil/continual_clip/models.py l.62-76, configs/class/*-ZSCL.yaml): one epoch,
# 30 warm-up iterations, batch 64, ls 0.2; lr per config (TinyImageNet 7.1e-6).
CIL_RECIPE = {"label_smoothing": 0.2, "weight_decay": 0.0, "warmup": 30, "epochs": 1, "batch_size": 64,
              "lr": 7.1e-6, "augment": True}

for _name, _config in PRESET_CONFIGS.items():
    register(_name, MethodSpec(_config, build_zscl, recipe=CIL_RECIPE if _name == "zscl-cil" else RECIPE,
                               check=check_run))

__all__ = ["CIL_RECIPE", "PRESET_HELP", "RECIPE", "ZSCL", "build_zscl", "options_of"]
