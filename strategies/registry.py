"""Method registry: ``method.name`` in a suite YAML -> config dataclass + strategy builder + checks.

A leaf module: it imports no method. Each method module registers itself when imported, and the
package's ``__init__`` imports them all (``strategies.baselines``, ``strategies.mozo``,
``strategies.condu``), so ``from strategies.registry import METHODS`` gives the filled registry.

A builder has the signature ``build(model, cfg, *, train, plugins, evaluator, device, benchmark)``
and returns an Avalanche ``SupervisedTemplate``. ``label_space`` is the training label space the
method uses when ``train.label_space`` is ``auto``; ``recipe`` holds the method paper's training
defaults (``train.*`` keys), which sit between ``TrainConfig``'s defaults and the suite YAML;
``check(run)`` holds the method's cross-field checks on a whole run (its options against the model,
the training recipe): it raises ``ValueError("method.<field> = <value>: <why>; allowed: ...")``, a
message that names the field relative to the run, and the suite validator prefixes file and run.
``reads`` names the parts of a run's config the method's numbers depend on — whole sections
(``"train"``) or single fields (``"train.eval_batch_size"``); a run's fingerprint is those parts plus
the seed (``runs.fingerprint``, docs/outputs.md "What the fingerprint covers"), so a field a method
does not read never marks its finished runs as changed.
Option ranges and help text are not here: they live on the config dataclass's fields
(:mod:`strategies.options`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SECTIONS = ("model", "stream", "train", "method", "eval")  # a run's config sections (RunConfig)
# what evaluating a model reads besides model / stream / method / eval: the evaluation minibatch and
# the compute settings (numerics); a method that trains nothing reads these and no training option
EVALUATION_READS = ("model", "stream", "method", "eval", "train.eval_batch_size", "train.device",
                    "train.precision", "train.compile")


@dataclass(frozen=True)
class MethodSpec:
    config: type  # the method's option dataclass (YAML keys besides `name`)
    build: Callable[..., Any]  # builds the Avalanche strategy
    label_space: str = "current"  # training label space under train.label_space=auto
    trains: bool = True  # False for zero-shot evaluation
    recipe: dict[str, Any] = field(default_factory=dict)  # the paper's train.* defaults (YAML overrides them)
    check: Callable[[Any], None] | None = None  # cross-field checks of a run; raises ValueError
    reads: tuple[str, ...] = SECTIONS  # config sections / dotted fields the method's numbers depend on


METHODS: dict[str, MethodSpec] = {}


def register(name: str, spec: MethodSpec) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = spec
