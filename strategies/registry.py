"""Method registry: ``method.name`` in a suite YAML -> config dataclass + strategy builder.

A builder has the signature ``build(model, cfg, *, train, plugins, evaluator, device, benchmark)``
and returns an Avalanche ``SupervisedTemplate``. ``label_space`` is the training label space the
method uses when ``train.label_space`` is ``auto``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    config: type  # the method's option dataclass (YAML keys besides `name`)
    build: Callable[..., Any]  # builds the Avalanche strategy
    label_space: str = "current"  # training label space under train.label_space=auto
    trains: bool = True  # False for zero-shot evaluation


METHODS: dict[str, MethodSpec] = {}


def register(name: str, spec: MethodSpec) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = spec


def _load_all() -> None:
    from . import (
        baselines,  # noqa: F401  (registers zeroshot, naive, lwf, ewc, replay, ...)
        mozo,  # noqa: F401  (registers mozo)
    )


_load_all()
