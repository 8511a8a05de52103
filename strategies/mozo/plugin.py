"""MoZO's plugin: a zeroth-order update of the selected units next to the first-order step.

Before training, the units chosen by the selector (branch × layers) are taken out of autograd;
the others stay first-order (FO) and are updated by the strategy's optimizer. At every iteration,
after the FO backward and before the FO optimizer step (so both updates are estimated at the same
θ), the plugin runs one ZO step over the ZO units (MoZO §3): per-branch ε (ε_vision < ε_language),
sign-normalised estimate, conservative candidate selection. The plugin can be attached to any
Avalanche strategy whose model is a :class:`~strategies.clip.CLIPClassifier`.

Choices where the paper is silent (documented in the README):
- ZO learning rate: ``zo_lr`` (default = the FO peak lr), following the FO warm-up + cosine
  schedule (scaled by the optimizer's current lr / peak lr);
- mixing ratio λ (``mix``): the ZO update is applied with step ``λ·zo_lr``; λ = 1 applies both;
- per-step figures (ZO loss, projected gradient, accepted candidate) are published through the
  strategy's evaluator, so every logger (W&B included) gets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue

from ..clip import CLIPClassifier, UnitKey
from .selector import select_zo_units
from .zo import ZOGroup, ZOStepResult, zo_step


@dataclass
class MoZOConfig:
    branch: Literal["dual", "vision", "language", "none"] = "dual"  # towers whose units use ZO
    layers: str | list[int] = "hop-even"  # all | hop-odd | hop-even | prefix-K | suffix-K | [layer numbers]
    one_based: bool = True  # layer numbers (hop-odd/even, lists) count from 1, as the paper's tables
    eps_language: float = 1e-3  # ZO perturbation radius ε_l of language units (paper's ZO default)
    eps_vision: float = 5e-4  # ε_v < ε_l: the vision branch's ZO estimate has higher variance
    zo_lr: float | None = None  # ZO step size; None = the FO learning rate (train.lr)
    queries: int = 1  # q: random directions averaged per ZO estimate
    two_sided: bool = True  # (L(θ+εz) − L(θ−εz))/2ε, else one-sided (L(θ+εz) − L(θ))/ε
    sign: Literal["scalar", "elementwise", "none"] = "scalar"  # sign normalisation of the estimate
    candidate: Literal["conservative", "aggressive"] = "conservative"  # keep best of θ, θ∓ηĝ / apply ĝ
    mix: float = 1.0  # λ: ZO step = λ · zo_lr (1 = FO and ZO updates both applied each step)
    zo_weight_decay: float = 0.0  # decoupled weight decay on accepted ZO moves (matrices only)
    log_every: int = 1  # publish ZO figures every this many iterations


class MoZOPlugin(SupervisedPlugin):
    """Partitions units into ZO / FO at construction and applies the ZO step every iteration."""

    def __init__(self, model: CLIPClassifier, cfg: MoZOConfig, *, base_lr: float, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.base_lr = base_lr
        self.zo_keys: set[UnitKey] = select_zo_units(model.units.keys(), cfg.branch, cfg.layers,
                                                     one_based=cfg.one_based)
        self.fo_keys: set[UnitKey] = set(model.units) - self.zo_keys
        self.groups = self._make_groups(model)
        for group in self.groups:
            for p in group.params:
                p.requires_grad_(False)  # ZO units live outside autograd: no activations stored for them
        self.generator = torch.Generator().manual_seed(seed)
        self.last: ZOStepResult | None = None

    def _make_groups(self, model: CLIPClassifier) -> list[ZOGroup]:
        eps = {"vision": self.cfg.eps_vision, "language": self.cfg.eps_language}
        groups = []
        for branch in ("vision", "language"):
            params: list[torch.Tensor] = [
                p for key in sorted(self.zo_keys) if key[0] == branch for p in model.units[key].parameters()
            ]
            if params:
                groups.append(ZOGroup(branch, params, eps[branch], self.cfg.zo_weight_decay))
        return groups

    @property
    def zo_branches(self) -> set[str]:
        return {g.name for g in self.groups}

    def loss_closure(self, strategy: Any) -> Any:
        """Minibatch loss at the current θ, reusing the tower the ZO units do not touch."""
        model: CLIPClassifier = strategy.model
        x, y = strategy.mb_x, strategy.mb_y
        with torch.no_grad():
            fixed_image = None if "vision" in self.zo_branches else model.encode_image(x)

        def loss() -> torch.Tensor:
            with torch.no_grad():
                image = fixed_image if fixed_image is not None else model.encode_image(x)
                return strategy._criterion(model.logits_from_features(image, model.text_features()), y)

        return loss

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        if not self.groups:
            return
        schedule = strategy.optimizer.param_groups[0]["lr"] / self.base_lr if self.base_lr else 1.0
        lr = self.cfg.mix * (self.cfg.zo_lr if self.cfg.zo_lr is not None else self.base_lr) * schedule
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        self.last = zo_step(self.groups, self.loss_closure(strategy), seed, lr=lr, q=self.cfg.queries,
                            two_sided=self.cfg.two_sided, sign_mode=self.cfg.sign, mode=self.cfg.candidate)
        if strategy.clock.train_iterations % self.cfg.log_every == 0:
            self._publish(strategy, self.last)

    def _publish(self, strategy: Any, result: ZOStepResult) -> None:
        x = strategy.clock.train_iterations
        figures = {
            "MoZO/zo_loss": result.loss,
            "MoZO/projected_grad": sum(result.projected) / len(result.projected),
            "MoZO/candidate": {"theta": 0, "minus": -1, "plus": 1, "aggressive": 2}[result.candidate],
            "MoZO/fo_loss": float(strategy.loss.detach()),
        }
        for name, value in figures.items():
            strategy.evaluator.publish_metric_value(MetricValue(self, name, value, x))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
