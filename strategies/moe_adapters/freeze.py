"""Activate-freeze, pure torch (MoE-Adapters §3.2; docs/methods/moe_adapters.md#activate-freeze).

After each task, per block and tower, the ``k`` experts its router chose most often over the task's
training (counts of the gates' top-k choices, every sample of every forward) join the frozen set; later
tasks do not update them. The set is a union: when the task's top-k are already frozen (the top-k repeat),
it does not grow — the official code appends the names to a file and reads ``set(lines)``.
"""

from __future__ import annotations

import torch


def most_chosen(counts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest counts, (k,) (``torch.topk``'s order among ties, as the official code)."""
    return counts.topk(min(k, counts.numel())).indices


def grow_frozen(frozen: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """The frozen mask (E,) bool after a task with expert ``counts`` (E,): ``frozen ∪ top-k(counts)``."""
    grown = frozen.clone()
    if k > 0:
        grown[most_chosen(counts, k).to(grown.device)] = True
    return grown
