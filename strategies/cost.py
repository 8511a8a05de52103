"""What a method costs beyond the frozen backbone: the one small interface every method implements.

A plugin (or strategy) that keeps state besides the model's weights — ConDU's triggers and prototypes,
a replay buffer, a teacher model, reference-data features, RAIL's matrices, MoE router banks and
autoencoders — reports it by defining ``extra_state() -> dict[str, int]``: a name per kind of state and
its size in bytes. The runner sums what every plugin reports (:func:`extra_state_of`) and records it with
the run's other costs (trainable parameters, peak memory, time; ``docs/metrics.md#cost``). A method
without extra state reports nothing (0 bytes in total). Imports only torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ReportsExtraState(Protocol):
    """Implemented by plugins that store state beyond the backbone (bytes per named kind of state)."""

    def extra_state(self) -> dict[str, int]: ...


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (a tensor, module, or nested dict / list / tuple of them).

    Tensors reached twice (the same object) count once; a module counts its parameters and buffers.
    """
    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if id(item) not in seen:
                seen.add(id(item))
                total += item.numel() * item.element_size()
        elif isinstance(item, torch.nn.Module):
            stack.extend(item.parameters())
            stack.extend(item.buffers())
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return total


def extra_state_of(parts: Iterable[Any]) -> dict[str, int]:
    """Merge what every part implementing :class:`ReportsExtraState` reports (same names add up)."""
    merged: dict[str, int] = {}
    for part in parts:
        if isinstance(part, ReportsExtraState):
            for name, size in part.extra_state().items():
                merged[name] = merged.get(name, 0) + int(size)
    return merged


def count_parameters(params: Iterable[torch.Tensor]) -> int:
    """Number of distinct scalars in ``params`` (a tensor listed twice, e.g. in two groups, counts once)."""
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
