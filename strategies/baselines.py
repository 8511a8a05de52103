"""Avalanche's own strategies around the CLIP classifier, with their options settable from YAML.

Each baseline is Avalanche's class unchanged; this module only declares its options (defaults live
in the dataclasses below) and the training label space it needs: methods that replay or distil old
classes (LwF, Replay, A-GEM) train over every class seen so far, the others over the current
experience's classes (the usual CLIP continual-learning protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from avalanche.training import AGEM, EWC, LwF, Naive, Replay, SynapticIntelligence
from avalanche.training.templates import SupervisedTemplate

from .options import COUNT, NONNEGATIVE, POSITIVE, option
from .registry import EVALUATION_READS, MethodSpec, register
from .training import make_optimizer, template_kwargs


class ZeroShot(SupervisedTemplate):
    """No training: evaluates the model as it is (zero-shot CLIP when no unit was trained)."""

    def _train_exp(self, experience: Any, eval_streams: Any = None, **kwargs: Any) -> None:
        return None


@dataclass
class NoOptions:
    pass


@dataclass
class LwFConfig:
    alpha: float = option(1.0, "weight of the distillation loss on old classes", range=NONNEGATIVE)
    temperature: float = option(2.0, "softmax temperature of the distillation", range=POSITIVE)


@dataclass
class EWCConfig:
    ewc_lambda: float = option(100.0, "weight of the quadratic penalty", range=NONNEGATIVE)
    mode: Literal["separate", "online"] = option("separate", "one penalty per experience, or a running one")
    decay_factor: float | None = option(None, "online mode: importance decay (required there)", range=NONNEGATIVE)


@dataclass
class ReplayConfig:
    mem_size: int = option(2000, "exemplars kept in the replay buffer (class-balanced by experience)", range=COUNT)


@dataclass
class SIConfig:
    si_lambda: float = option(1.0, "weight of the synaptic-intelligence penalty", range=NONNEGATIVE)


@dataclass
class AGEMConfig:
    patterns_per_exp: int = option(100, "exemplars stored per experience", range=COUNT)
    sample_size: int = option(64, "exemplars sampled to compute the reference gradient", range=COUNT)


def _common(model: Any, train: Any, plugins: list, evaluator: Any, device: Any, criterion: Any) -> dict:
    return dict(model=model, optimizer=make_optimizer(model, train), criterion=criterion,
                **template_kwargs(train, device, plugins, evaluator))


def _builder(cls: type, *option_names: str) -> Any:
    def build(model: Any, cfg: Any, *, train: Any, plugins: list, evaluator: Any, device: Any,
              criterion: Any, **_: Any) -> SupervisedTemplate:
        options = {name: getattr(cfg, name) for name in option_names}
        return cls(**_common(model, train, plugins, evaluator, device, criterion), **options)

    return build


def _validate_ewc(cfg: EWCConfig) -> None:
    if cfg.mode == "online" and cfg.decay_factor is None:
        raise ValueError("method.decay_factor is required when method.mode is 'online'")


def _build_ewc(model: Any, cfg: EWCConfig, **kwargs: Any) -> SupervisedTemplate:
    _validate_ewc(cfg)
    return _builder(EWC, "ewc_lambda", "mode", "decay_factor")(model, cfg, **kwargs)


register("zeroshot", MethodSpec(NoOptions, _builder(ZeroShot), trains=False, reads=EVALUATION_READS))
register("naive", MethodSpec(NoOptions, _builder(Naive)))
register("lwf", MethodSpec(LwFConfig, _builder(LwF, "alpha", "temperature"), label_space="seen"))
register("ewc", MethodSpec(EWCConfig, _build_ewc))
register("replay", MethodSpec(ReplayConfig, _builder(Replay, "mem_size"), label_space="seen"))
register("si", MethodSpec(SIConfig, _builder(SynapticIntelligence, "si_lambda")))
register("agem", MethodSpec(AGEMConfig, _builder(AGEM, "patterns_per_exp", "sample_size"), label_space="seen"))
