"""Method registry: ``method.name`` in a suite YAML -> config dataclass + strategy builder.

A builder has the signature ``build(model, cfg, *, train, plugins, evaluator, device, benchmark)``
and returns an Avalanche ``SupervisedTemplate``. ``label_space`` is the training label space the
method uses when ``train.label_space`` is ``auto``; ``recipe`` holds the method paper's training
defaults (``train.*`` keys), which sit between ``TrainConfig``'s defaults and the suite YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    config: type  # the method's option dataclass (YAML keys besides `name`)
    build: Callable[..., Any]  # builds the Avalanche strategy
    label_space: str = "current"  # training label space under train.label_space=auto
    trains: bool = True  # False for zero-shot evaluation
    recipe: dict[str, Any] = field(default_factory=dict)  # the paper's train.* defaults (YAML overrides them)


METHODS: dict[str, MethodSpec] = {}


def register(name: str, spec: MethodSpec) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = spec


def _load_all() -> None:
    # Importing a method module registers it: baselines (zeroshot, naive, lwf, ewc, replay, si, agem),
    # mozo, condu.
    from . import baselines, condu, mozo  # noqa: F401


_load_all()
