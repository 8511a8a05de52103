"""MoZO's options (:class:`MoZOConfig`): which units use ZO and how the ZO step is taken (MoZO §3-4).

Each field carries its help text and allowed range (:mod:`strategies.options`); :func:`check_run`
holds the checks that need the rest of a suite run (the model's depth and storage precision), which
the suite validator calls through the method's ``MethodSpec.check``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..clip.model import arch_depths
from ..options import COUNT, NONNEGATIVE, POSITIVE, option
from .selector import BRANCHES, select_zo_units

VISION_PERTURBATIONS: tuple[str, ...] = ("joint", "per_tower", "scaled")
VisionPerturbation = Literal["joint", "per_tower", "scaled"]
PROBE_PRECISIONS: tuple[str, ...] = ("fp32", "train")
CANDIDATES: tuple[str, ...] = ("conservative", "aggressive", "probe")


@dataclass
class MoZOConfig:
    branch: Literal["dual", "vision", "language", "none"] = option("dual", "towers whose units use ZO")
    layers: str | list[int] = option("hop-even", "all | hop-odd | hop-even | prefix-K | suffix-K | [layer numbers]")
    one_based: bool = option(True, "layer numbers (hop-odd/even, lists) count from 1, as the paper's tables")
    eps_language: float = option(1e-3,
        "ZO perturbation radius ε_l of language units (paper's ZO default)", range=POSITIVE)
    eps_vision: float = option(5e-4, "ε_v < ε_l: the vision branch's ZO estimate has higher variance", range=POSITIVE)
    vision_perturbation: VisionPerturbation = option("per_tower",
        "per_tower / joint (the paper's literal reading) / scaled")
    zo_lr: float | None = option(None,
        "ZO step size at the optimizer's initial lr (scaled by its schedule); None = its lr", range=POSITIVE)
    queries: int = option(1, "q: random directions averaged per ZO estimate", range=COUNT)
    two_sided: bool = option(True, "(L(θ+εz) − L(θ−εz))/2ε, else one-sided (L(θ+εz) − L(θ))/ε")
    sign: Literal["scalar", "elementwise", "none"] = option("scalar", "sign normalisation of the estimate")
    candidate: Literal["conservative", "aggressive", "probe"] = option("conservative",
        "best θ, θ∓ηĝ / θ−ηĝ / best θ±εz")
    mix: float = option(1.0, "λ: ZO step = λ · ZO lr (1 = FO and ZO updates both applied each step)", range=POSITIVE)
    zo_weight_decay: float = option(0.0,
        "decoupled weight decay on accepted ZO moves (matrices only)", range=NONNEGATIVE)
    penalties: bool = option(True, "ZO losses include the penalties of attached LwF / EWC / SI / MAS plugins")
    log_every: int = option(1, "publish ZO figures every this many iterations", range=COUNT)
    probe_precision: Literal["fp32", "train"] = option("fp32", "ZO evaluations in fp32, or in train.precision")
    cache_directions: bool = option(True, "draw z once per step (q × ZO-parameter memory) instead of per use")

    def __post_init__(self) -> None:
        choices = {"branch": BRANCHES, "vision_perturbation": VISION_PERTURBATIONS,
                   "sign": ("scalar", "elementwise", "none"), "candidate": CANDIDATES,
                   "probe_precision": PROBE_PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"MoZO {name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        positive = {"eps_language": self.eps_language, "eps_vision": self.eps_vision, "mix": self.mix,
                    "zo_lr": 1.0 if self.zo_lr is None else self.zo_lr}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"MoZO {name}={value!r}: expected a number > 0")
        if self.candidate == "probe" and not self.two_sided:
            raise ValueError("MoZO candidate='probe' needs two_sided: true (its candidates are θ ± εz)")
        for name in ("queries", "log_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"MoZO {name}={value!r}: expected an int >= 1")


CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MoZOConfig))


def make_config(cfg: MoZOConfig | None = None, **options: Any) -> MoZOConfig:
    """``cfg`` (default: the paper's MoZO) with ``options`` replacing its fields; unknown names raise."""
    unknown = sorted(set(options) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"MoZO: unknown options {unknown}; allowed: {', '.join(CONFIG_FIELDS)}")
    return dataclasses.replace(cfg or MoZOConfig(), **options)


# ---- checks on a whole suite run (MethodSpec.check) ---------------------------------------------
_MAX_ECHO = 60  # characters of a value shown in an error message (as runs.yamlio.short)


def _echo(value: Any) -> str:
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= _MAX_ECHO else text[: _MAX_ECHO - 1] + "…"


def check_run(run: Any) -> None:
    """MoZO's facts about a suite run known without data or weights; ``ValueError`` naming the field.

    ``run`` is a ``runs.config.RunConfig`` (``run.method.cfg`` a :class:`MoZOConfig`).
    """
    cfg: MoZOConfig = run.method.cfg
    check_probe_precision(cfg, run.model.precision)
    check_layers(cfg, run.model)


def check_probe_precision(cfg: MoZOConfig, storage: str) -> None:
    """``probe_precision: fp32`` needs an fp32 backbone: a bf16/fp16 one runs only under autocast."""
    if cfg.probe_precision == "fp32" and storage != "fp32":
        raise ValueError(f"method.probe_precision = 'fp32' needs model.precision = 'fp32' (got {_echo(storage)}: "
                         f"a {storage} backbone runs only under autocast); allowed: model.precision: fp32, or "
                         f"method.probe_precision: train")


def check_layers(cfg: MoZOConfig, model: Any) -> None:
    """The layer selection (``branch`` × ``layers``) fits the depth of ``model.arch``'s towers (MoZO §4)."""
    depths = arch_depths(model.arch)
    keys = [(tower, i) for tower, depth in depths.items() if tower in model.units.branches for i in range(depth)]
    if not keys or model.units.kind in ("none", "full"):
        return
    try:
        select_zo_units(keys, cfg.branch, cfg.layers, one_based=cfg.one_based)
    except ValueError as error:
        raise ValueError(f"method.layers = {_echo(cfg.layers)}: {error} (model {model.arch}: {depths})") from None
