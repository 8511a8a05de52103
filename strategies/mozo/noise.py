"""The units' noise of a MoZO step, drawn once and replayed (docs/methods/mozo.md, "MoZO step cost").

MoZO evaluates one minibatch many times under the same model seed (MoZO §3: every probe and candidate
of a step sees the same model randomness), so every unit draws the same dropout masks and router
noise in every evaluation; drawing them is ~20 % of a CPU step (Bernoulli masks). :class:`NoiseTape`
implements the units' :class:`~strategies.clip.units.NoiseRecorder` protocol: it records each unit's
draws in the step's first-order forward and hands them back to the ZO evaluations.
"""

from __future__ import annotations

import torch
from torch import nn

from ..clip.units import noise_units


class NoiseTape:
    """The units' noise (dropout masks, router noise) of one forward per unit, recorded and replayed.

    While ``recording``, each unit's first draw of each kind is kept; while ``replaying``, a unit whose
    recorded noise has the shape and device of the draw it is about to make gets it back and draws
    nothing. Exact when the units are the model's only consumers of randomness after the point where
    the recording started (:func:`only_units_draw_noise`)."""

    def __init__(self) -> None:
        self.recording = False
        self.replaying = False
        self.store: dict[tuple[int, str], torch.Tensor] = {}

    def clear(self) -> None:
        self.recording = self.replaying = False
        self.store.clear()

    def replay(self, unit: nn.Module, kind: str, like: torch.Tensor) -> torch.Tensor | None:
        if not self.replaying:
            return None
        noise = self.store.get((id(unit), kind))
        return noise if noise is not None and noise.shape == like.shape and noise.device == like.device else None

    def record(self, unit: nn.Module, kind: str, noise: torch.Tensor) -> None:
        if self.recording:
            self.store.setdefault((id(unit), kind), noise)


def only_units_draw_noise(model: nn.Module) -> bool:
    """True when no module but the units' own dropout / router draws random numbers (the condition
    under which :class:`NoiseTape` replay is exact): no backbone dropout, attention dropout or patch
    dropout with a non-zero rate."""
    owned = {id(m) for unit in noise_units(model) for m in unit.modules()}
    for module in model.modules():
        if id(module) in owned:
            continue
        rate = getattr(module, "p", None) if isinstance(module, torch.nn.Dropout) else None
        if isinstance(module, torch.nn.MultiheadAttention):
            rate = module.dropout
        if type(module).__name__ == "PatchDropout":
            rate = getattr(module, "prob", 0.0)
        if rate:
            return False
    return True
