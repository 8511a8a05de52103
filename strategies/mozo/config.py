"""MoZO's options (:class:`MoZOConfig`): which units use ZO and how the ZO step is taken (MoZO §3-4)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .selector import BRANCHES

VISION_PERTURBATIONS: tuple[str, ...] = ("joint", "per_tower", "scaled")
VisionPerturbation = Literal["joint", "per_tower", "scaled"]
PROBE_PRECISIONS: tuple[str, ...] = ("fp32", "train")
CANDIDATES: tuple[str, ...] = ("conservative", "aggressive", "probe")


@dataclass
class MoZOConfig:
    branch: Literal["dual", "vision", "language", "none"] = "dual"  # towers whose units use ZO
    layers: str | list[int] = "hop-even"  # all | hop-odd | hop-even | prefix-K | suffix-K | [layer numbers]
    one_based: bool = True  # layer numbers (hop-odd/even, lists) count from 1, as the paper's tables
    eps_language: float = 1e-3  # ZO perturbation radius ε_l of language units (paper's ZO default)
    eps_vision: float = 5e-4  # ε_v < ε_l: the vision branch's ZO estimate has higher variance
    vision_perturbation: VisionPerturbation = "per_tower"  # per_tower / joint (paper literal) / scaled: README
    zo_lr: float | None = None  # ZO step size at the optimizer's initial lr (scaled by its schedule); None = its lr
    queries: int = 1  # q: random directions averaged per ZO estimate
    two_sided: bool = True  # (L(θ+εz) − L(θ−εz))/2ε, else one-sided (L(θ+εz) − L(θ))/ε
    sign: Literal["scalar", "elementwise", "none"] = "scalar"  # sign normalisation of the estimate
    candidate: Literal["conservative", "aggressive", "probe"] = "conservative"  # best θ, θ∓ηĝ / θ−ηĝ / best θ±εz
    mix: float = 1.0  # λ: ZO step = λ · ZO lr (1 = FO and ZO updates both applied each step)
    zo_weight_decay: float = 0.0  # decoupled weight decay on accepted ZO moves (matrices only)
    penalties: bool = True  # ZO losses include the penalties of attached LwF / EWC / SI / MAS plugins
    log_every: int = 1  # publish ZO figures every this many iterations
    probe_precision: Literal["fp32", "train"] = "fp32"  # ZO evaluations in fp32, or in train.precision (README)
    cache_directions: bool = True  # draw z once per step (q × ZO-parameter memory) instead of per use

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
