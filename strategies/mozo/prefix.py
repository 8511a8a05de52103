"""Blocks below a tower's lowest ZO layer run once per MoZO step (layer-wise configurations;
docs/methods/mozo.md, "MoZO step cost").

A ZO probe or candidate moves only the ZO units; the residual blocks of a tower below its lowest ZO
layer ``k`` (and the FO units in them, which the FO optimizer moves only after the ZO step) compute the
same activation in every evaluation of the step. :class:`PrefixCache` records, during the step's
first-order forward (run under the step's seeded randomness, :class:`~strategies.mozo.seeded.SeededForward`),
the output of block ``k − 1`` and the RNG state right after it; inside :meth:`PrefixCache.replaying`, the
tower's blocks ``0..k−1`` are swapped for a module that returns that activation and puts the RNG back
to the recorded state, so blocks ``k..`` draw exactly the dropout / router noise they would draw after
running the prefix. The tower's stem (patch / token embedding) still runs: it is cheap and
deterministic. A replay whose input does not have the recorded shape (other prompts, another batch)
runs the real blocks. Towers compiled with ``torch.compile`` (``train.compile``) are left alone:
swapping their blocks would make dynamo recompile them at every evaluation.

Saved compute ≈ k / depth of a ZO evaluation of that tower: 1/12 for hop-even, 6/12 for suffix-6.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..clip.units import UnitKey, tower_blocks
from ..rng import rng_state, set_rng_state


def lowest_zo_layers(zo_keys: Iterable[UnitKey]) -> dict[str, int]:
    """``{branch: lowest 0-based layer holding a ZO unit}``."""
    lowest: dict[str, int] = {}
    for branch, layer in zo_keys:
        lowest[branch] = min(layer, lowest.get(branch, layer))
    return lowest


class _Replay(nn.Module):
    """Stands for block 0 of a prefix: returns the recorded activation, restores the recorded RNG state."""

    def __init__(self, block: nn.Module, activation: torch.Tensor, state: Any) -> None:
        super().__init__()
        self.block, self.activation, self.state = block, activation, state

    def __getattr__(self, name: str) -> Any:  # what the tower asks of its first block (e.g. its dtype)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.shape != self.activation.shape:
            raise _ShapeMismatch
        set_rng_state(self.state)
        return self.activation


class _Skip(nn.Module):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


class _ShapeMismatch(Exception):
    pass


def _compiled_towers(clip: Any) -> set[str]:
    """Towers run through ``torch.compile`` (``nn.Module.compile``; ``CLIPClassifier.compile_towers``)."""
    text = clip.text if hasattr(clip, "text") else clip
    modules = {"vision": [getattr(clip, "visual", None), getattr(getattr(clip, "visual", None), "transformer", None)],
               "language": [getattr(text, "transformer", None)]}
    return {b for b, ms in modules.items() if any(getattr(m, "_compiled_call_impl", None) is not None for m in ms)}


class PrefixCache:
    """Record a tower's prefix activation in the FO forward; replay it in ZO evaluations (module doc)."""

    def __init__(self, clip: Any, zo_keys: Iterable[UnitKey]) -> None:
        self.blocks = tower_blocks(clip)
        compiled = _compiled_towers(clip)  # swapping blocks of a compiled tower would recompile it every time
        self.lowest = {b: k for b, k in lowest_zo_layers(zo_keys).items()
                       if k >= 1 and b in self.blocks and b not in compiled}
        self.recorded: dict[str, tuple[torch.Tensor, Any]] = {}
        self._hooks: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self.lowest)

    def record(self) -> None:
        """Start recording: the next forward of each tower stores block ``k − 1``'s output."""
        self.stop()
        self.recorded.clear()
        for branch, k in self.lowest.items():
            def hook(_m: nn.Module, _args: Any, output: torch.Tensor, branch: str = branch) -> None:
                if branch not in self.recorded:  # the first forward of the tower in this step
                    self.recorded[branch] = (output.detach(), rng_state())

            self._hooks.append(self.blocks[branch][k - 1].register_forward_hook(hook))

    def stop(self) -> None:
        """Stop recording (the recorded activations stay until the next :meth:`record`)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def clear(self) -> None:
        self.stop()
        self.recorded.clear()

    @contextlib.contextmanager
    def replaying(self, branch: str) -> Iterator[bool]:
        """Within the block, ``branch``'s tower starts from the recorded activation (yields whether it does)."""
        if branch not in self.recorded:
            yield False
            return
        blocks, k = self.blocks[branch], self.lowest[branch]
        saved = [blocks[i] for i in range(k)]
        activation, state = self.recorded[branch]
        blocks[0] = _Replay(saved[0], activation, state)
        for i in range(1, k):
            blocks[i] = _Skip()
        try:
            yield True
        finally:
            for i, block in enumerate(saved):
                blocks[i] = block


def run_with_prefix(cache: PrefixCache, branch: str, fn: Any) -> Any:
    """``fn()`` with ``branch``'s prefix replayed; the real blocks when the recorded shape does not fit."""
    try:
        with cache.replaying(branch):
            return fn()
    except _ShapeMismatch:
        return fn()
