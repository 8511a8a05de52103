"""Running a function under a fixed model randomness (dropout, router noise). Imports only torch.

MoZO's step evaluates the same minibatch loss many times (first-order forward, ZO probes and
candidates); every evaluation must see the same dropout masks and router noise, and the caller's RNG
stream must not move. :func:`seeded` forks the global CPU and CUDA generators, seeds them, runs the
function and restores them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def _cuda_devices_in_use() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def run_seeded(fn: Callable[[], T], seed: int) -> T:
    """``fn()`` with the global CPU and CUDA RNGs seeded with ``seed``, restored after the call."""
    devices = _cuda_devices_in_use()
    with torch.random.fork_rng(devices=devices):
        # not torch.manual_seed: with CUDA uninitialised it queues a lazy CUDA seeding that would
        # outlive the fork (and costs ~1 ms recording a traceback)
        torch.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        return fn()


def seeded(fn: Callable[[], T], seed: int) -> Callable[[], T]:
    """``fn`` wrapped so that every call sees the same RNG state (:func:`run_seeded` with ``seed``)."""
    return lambda: run_seeded(fn, seed)


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The global CPU generator's state and that of every initialised CUDA device."""
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in _cuda_devices_in_use()]


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    """Restore what :func:`rng_state` returned."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for d, s in enumerate(cuda):
        torch.cuda.set_rng_state(s, d)
