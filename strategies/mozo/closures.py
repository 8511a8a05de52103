"""The minibatch losses one MoZO step evaluates: feature reuse and penalty replay (MoZO §3;
docs/methods/mozo.md, "MoZO step cost" and "Fidelity").

- :class:`PenaltyReplay`: the loss of given logits is the strategy's criterion plus the penalties
  of Avalanche's LwF / EWC / SI / MAS plugins (their ``before_backward`` replayed), so the ZO units
  minimise the objective the first-order (FO) units do.
- :class:`StepLosses`: L at the current θ under the step's model randomness (:class:`TowerSeeds`),
  reusing what does not change. A tower whose ZO units are at θ (detected by their version counters)
  computes the features it computed at θ: the image features are computed once per step, or taken
  from the FO forward (``at_theta``), and reused by every evaluation with the vision units at θ
  (language-only ZO, language probes), so a per-tower step costs the forwards of a joint one; the
  text features of ``at_theta`` likewise while the language units are at θ (otherwise the model's
  text cache serves). ``prefix``: towers start from the activations recorded below their lowest ZO
  layer (:mod:`strategies.mozo.prefix`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from ..clip import CLIPClassifier
from ..rng import run_seeded
from .prefix import PrefixCache, run_with_prefix
from .seeded import TowerSeeds
from .zo import LossFn, ZOGroup

LossOfLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> loss


class PenaltyReplay:
    """``criterion(logits, y)`` plus the penalties that ``plugins`` (LwF / EWC / SI / MAS) add in
    ``before_backward``; the strategy's ``mb_output`` and ``loss`` are put back after."""

    def __init__(self, strategy: Any, plugins: Sequence[Any]) -> None:
        self.strategy, self.plugins = strategy, list(plugins)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        strategy = self.strategy
        loss = strategy._criterion(logits, y)
        if not self.plugins:
            return loss
        saved = strategy.mb_output, strategy.loss
        strategy.mb_output, strategy.loss = logits, loss
        try:
            for plugin in self.plugins:
                plugin.before_backward(strategy)
            return strategy.loss
        finally:
            strategy.mb_output, strategy.loss = saved


def _version(tensors: list[torch.Tensor]) -> int:
    """Sum of in-place version counters: changes whenever a probe or an update touches a tensor."""
    return sum(t._version for t in tensors)


def _params_of(groups: Sequence[ZOGroup], branch: str) -> list[torch.Tensor]:
    return [p for g in groups if g.name == branch for p in g.params]


class StepLosses:
    """The loss evaluations of one step on ``(x, y)`` under ``model_seed`` (module doc).

    :meth:`full` is L at the current θ; :meth:`per_group` gives the closure for each ZO group's own
    probes (:func:`strategies.mozo.zo.zo_estimate`, ``group_loss_fns``): the vision group's probes
    recompute both towers, the language group's probes reuse the image features at θ.
    """

    def __init__(self, model: CLIPClassifier, x: torch.Tensor, y: torch.Tensor, loss: LossOfLogits,
                 groups: Sequence[ZOGroup], model_seed: int,
                 at_theta: tuple[torch.Tensor, torch.Tensor] | None = None, prefix: PrefixCache | None = None) -> None:
        self.model, self.x, self.y, self.loss, self.groups = model, x, y, loss, groups
        self.model_seed, self.seeds, self.prefix = model_seed, TowerSeeds.of(model_seed), prefix
        self.vision_params, self.language_params = _params_of(groups, "vision"), _params_of(groups, "language")
        self.vision_version, self.language_version = _version(self.vision_params), _version(self.language_params)
        self.image_at_theta_kept: torch.Tensor | None = None if at_theta is None else at_theta[0]
        self.text_at_theta: torch.Tensor | None = None if at_theta is None else at_theta[1]

    # ---- the closures the ZO step calls --------------------------------------------------------
    def full(self) -> torch.Tensor:
        """L(current θ): both towers' features, each reused while its units are at θ."""
        return self._loss_with(self.image())

    def vision_at_theta(self) -> torch.Tensor:
        """L with the image features at θ: the loss while only the language units move."""
        return self._loss_with(self.image_at_theta())

    def per_group(self) -> list[LossFn]:
        """One closure per ZO group, in group order, for per-tower probes."""
        return [self.full if g.name == "vision" else self.vision_at_theta for g in self.groups]

    def of_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The loss of given logits (e.g. the FO forward's: L(θ)) under the step's model seed, detached."""
        with torch.no_grad():
            return run_seeded(partial(self.loss, logits, self.y), self.model_seed).detach()

    # ---- features ------------------------------------------------------------------------------
    def _loss_with(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.loss(self.model.logits_from_features(image, self.text()), self.y)

    def image_at_theta(self) -> torch.Tensor:
        """Image features with the vision units at θ: from the FO forward, or computed once."""
        if self.image_at_theta_kept is None:
            self.image_at_theta_kept = run_seeded(self._encode_image, self.seeds.vision)
        return self.image_at_theta_kept

    def image(self) -> torch.Tensor:
        """Image features at the vision units' current values."""
        if _version(self.vision_params) == self.vision_version:
            return self.image_at_theta()
        return run_seeded(self._encode_image, self.seeds.vision)

    def text(self) -> torch.Tensor:
        """Text features at the language units' current values."""
        if self.text_at_theta is not None and _version(self.language_params) == self.language_version:
            return self.text_at_theta
        return run_seeded(self._encode_text, self.seeds.language)

    def _encode_image(self) -> torch.Tensor:
        if self.prefix is None:
            return self.model.encode_image(self.x)
        return run_with_prefix(self.prefix, "vision", partial(self.model.encode_image, self.x))

    def _encode_text(self) -> torch.Tensor:
        if self.prefix is None:
            return self.model.text_features()
        return run_with_prefix(self.prefix, "language", self.model.text_features)
