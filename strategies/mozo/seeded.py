"""The step's model randomness and its first-order forward under it (MoZO §3; docs/methods/mozo.md,
"MoZO step cost").

Every evaluation of a MoZO step (the first-order forward, each ZO probe and candidate) sees the same
model randomness (dropout, router noise): one model seed per step, drawn independently of the
direction seed, and one stream per tower (:class:`TowerSeeds`), so a tower's features are the same
whether or not the other tower is recomputed. :class:`SeededForward` runs the classifier's forward
under those streams and keeps the features, so the ZO step takes L(θ) and the features at θ from it.
The classifier knows nothing of this: the plugin puts a :class:`SeededForward` in place of the
model's ``forward`` for the step's first-order forward (as ``accelerate`` wraps ``model.forward``)
and takes it away after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..clip import CLIPClassifier
from ..rng import run_seeded


@dataclass(frozen=True)
class TowerSeeds:
    """The RNG seeds of the two towers in one step: vision ``model_seed``, language ``model_seed + 1``."""

    vision: int
    language: int

    @classmethod
    def of(cls, model_seed: int) -> TowerSeeds:
        return cls(model_seed, model_seed + 1)


class SeededForward:
    """``model.forward`` with each tower under its own seed (:func:`strategies.rng.run_seeded`):
    ``logits_from_features(encode_image(x) | vision seed, text_features() | language seed)``; the
    features of the last call are kept (:attr:`features`)."""

    def __init__(self, model: CLIPClassifier, seeds: TowerSeeds) -> None:
        self.model, self.seeds = model, seeds
        self.image: torch.Tensor | None = None
        self.text: torch.Tensor | None = None
        self._previous: Any = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        image = run_seeded(lambda: model.encode_image(images), self.seeds.vision)
        text = run_seeded(model.text_features, self.seeds.language)
        self.image, self.text = image, text
        return model.logits_from_features(image, text)

    @property
    def features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(image, text) features of the last call, detached; None before any call."""
        if self.image is None or self.text is None:
            return None
        return self.image.detach(), self.text.detach()

    def install(self) -> None:
        """Run the model's forwards through this object until :meth:`remove`."""
        self._previous = vars(self.model).get("forward")  # an instance-level forward someone else set
        setattr(self.model, "forward", self)  # noqa: B010  (an instance attribute over the method)

    def remove(self) -> None:
        """Give the model its own forward back (no-op when not installed)."""
        if vars(self.model).get("forward") is not self:
            return
        if self._previous is None:
            delattr(self.model, "forward")
        else:
            setattr(self.model, "forward", self._previous)  # noqa: B010
