"""What each merging method keeps across tasks, and how it builds the merged model (docs/methods/merging.md).

A merge is a plain object over the pure functions of :mod:`.maths` — no Avalanche. It holds θ⁰ (the
trainable tensors when it is built), adds one task at a time (:meth:`Merge.add`: δ_t = θ_t − θ⁰ from the
live tensors), writes θ⁰ + λ·τ of the tasks so far into the live tensors (:meth:`Merge.load_merged`), and
says where the next task's fine-tuning starts (:meth:`Merge.start_weights`):

- :class:`TaskArithmeticMerge`: τ = Σ_t δ_t, kept as one running sum; every task starts from θ⁰;
- :class:`TIESMerge`: every task's trimmed δ̂_t, kept sparse (mask bits + kept values); every task starts
  from θ⁰; the merge is recomputed over all of them (trim → elect → disjoint mean);
- :class:`MagMaxMerge`: τ = max-|δ| over the tasks so far, kept as one running tensor set; sequential
  fine-tuning, so the last fine-tuned weights θ_t are kept too and the next task starts from them.

State for checkpoints: tensors (on the CPU) and plain values; θ⁰ is not saved, it is the model's own
initial state, as ConDU's store (strategies/condu/store.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..condu.fusion import max_magnitude_into
from .config import MagMaxConfig, MergingConfig, TaskArithmeticConfig, TIESConfig
from .maths import Delta, TrimmedDelta, add_delta_into, scaled_merge_into, ties_merge_into, trim


def _bytes(tensors: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class Merge:
    """θ⁰, the tasks added so far and the merged model, over the live trainable tensors ``params``."""

    name = "merge"
    sequential = False  # True: the next task starts from the last fine-tuned weights, not θ⁰

    def __init__(self, params: Mapping[str, Tensor], cfg: MergingConfig, *, chunk_bytes: int | None = None) -> None:
        self.params = dict(params)
        self.cfg, self.chunk_bytes = cfg, chunk_bytes
        self.theta0: Delta = {n: p.detach().clone() for n, p in self.params.items()}
        self.tasks = 0

    # ---- per task --------------------------------------------------------------------------------
    def start_weights(self) -> Delta:
        """Where the next task's fine-tuning starts: θ⁰ (each task from the pretrained model)."""
        return self.theta0

    def start_task(self) -> None:
        """Before training a task: :meth:`start_weights` into the live tensors."""
        self.follow_device()
        with torch.no_grad():
            for name, value in self.start_weights().items():
                self.params[name].copy_(value)

    def add(self) -> None:
        """After training task t: fold δ_t = θ_t − θ⁰ (the live tensors) into the kept state."""
        self.follow_device()
        theta = {n: p.detach() for n, p in self.params.items()}
        self._add(theta)
        self.tasks += 1

    def _add(self, theta: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    def scaling(self) -> float:
        """λ of θ⁰ + λ·τ after the tasks so far."""
        return float(self.cfg.scaling)  # type: ignore[arg-type]

    def load_merged(self) -> None:
        """θ⁰ + λ·τ of the tasks so far into the live tensors (θ⁰ before any task)."""
        if self.tasks == 0:
            self.start_task()
            return
        self._merge_into(self.params)

    def _merge_into(self, params: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    # ---- devices, state, cost --------------------------------------------------------------------
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def follow_device(self) -> None:
        """Keep the state on the live tensors' device (Avalanche moves the model after construction)."""
        device = self.device()
        if next(iter(self.theta0.values())).device != device:
            self.theta0 = {n: t.to(device) for n, t in self.theta0.items()}
        self._follow(device)

    def _follow(self, device: torch.device) -> None:
        pass

    def stored(self) -> dict[str, int]:
        """Bytes kept beyond the backbone, per kind of state (:mod:`strategies.cost`)."""
        return {f"{self.name}_theta0": _bytes(self.theta0)}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "tasks": self.tasks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["method"] != self.name:
            raise ValueError(f"merging: a checkpoint of {state['method']!r} cannot resume {self.name!r}")
        self.tasks = int(state["tasks"])


class _RunningMerge(Merge):
    """A merge whose τ is one running tensor set (Task Arithmetic's sum, MagMax's max-|δ|)."""

    def __init__(self, params: Mapping[str, Tensor], cfg: MergingConfig, *, chunk_bytes: int | None = None) -> None:
        super().__init__(params, cfg, chunk_bytes=chunk_bytes)
        self.tau: Delta = {n: torch.zeros_like(t) for n, t in self.theta0.items()}

    def _merge_into(self, params: Mapping[str, Tensor]) -> None:
        scaled_merge_into(params, self.theta0, self.tau, self.scaling(), chunk_bytes=self.chunk_bytes)

    def _follow(self, device: torch.device) -> None:
        if next(iter(self.tau.values())).device != device:
            self.tau = {n: t.to(device) for n, t in self.tau.items()}

    def stored(self) -> dict[str, int]:
        return {**super().stored(), f"{self.name}_tau": _bytes(self.tau)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tau": {n: t.cpu() for n, t in self.tau.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.tau = dict(state["tau"])


class TaskArithmeticMerge(_RunningMerge):
    """Task Arithmetic (Ilharco et al., ICLR 2023 §2): θ = θ⁰ + λ·Σ_t δ_t; λ = 1/t when ``scaling`` is None."""

    name = "task-arithmetic"

    def _add(self, theta: Mapping[str, Tensor]) -> None:
        add_delta_into(self.tau, theta, self.theta0, chunk_bytes=self.chunk_bytes)

    def scaling(self) -> float:
        lam = self.cfg.scaling
        return 1.0 / self.tasks if lam is None else float(lam)


class MagMaxMerge(_RunningMerge):
    """MagMax (Marczak et al., ECCV 2024 §3.2): sequential fine-tuning; τ = the max-|δ| entry over the
    task vectors δ_t = θ_t − θ⁰ so far; θ = θ⁰ + λ·τ. Keeps θ_t, where the next task starts."""

    name = "magmax"
    sequential = True

    def __init__(self, params: Mapping[str, Tensor], cfg: MergingConfig, *, chunk_bytes: int | None = None) -> None:
        super().__init__(params, cfg, chunk_bytes=chunk_bytes)
        self.last: Delta | None = None  # θ_t of the last task (None before any)

    def start_weights(self) -> Delta:
        return self.theta0 if self.last is None else self.last

    def _add(self, theta: Mapping[str, Tensor]) -> None:
        max_magnitude_into(self.tau, theta, self.theta0, chunk_bytes=self.chunk_bytes)
        self.last = {n: t.clone() for n, t in theta.items()}

    def _follow(self, device: torch.device) -> None:
        super()._follow(device)
        if self.last is not None and next(iter(self.last.values())).device != device:
            self.last = {n: t.to(device) for n, t in self.last.items()}

    def stored(self) -> dict[str, int]:
        return {**super().stored(), f"{self.name}_last": 0 if self.last is None else _bytes(self.last)}

    def state_dict(self) -> dict[str, Any]:
        last = None if self.last is None else {n: t.cpu() for n, t in self.last.items()}
        return {**super().state_dict(), "last": last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.last = None if state["last"] is None else dict(state["last"])


class TIESMerge(Merge):
    """TIES (Yadav et al., NeurIPS 2023 §3): every task from θ⁰; each δ_t trimmed to its top-k% magnitudes
    over the whole model when it is added; the merge elects signs and averages disjointly over all of them."""

    name = "ties"

    def __init__(self, params: Mapping[str, Tensor], cfg: MergingConfig, *, chunk_bytes: int | None = None) -> None:
        super().__init__(params, cfg, chunk_bytes=chunk_bytes)
        self.trims: list[TrimmedDelta] = []

    def _add(self, theta: Mapping[str, Tensor]) -> None:
        self.trims.append(trim(theta, self.theta0, self.cfg.k, chunk_bytes=self.chunk_bytes))  # type: ignore[union-attr]

    def _merge_into(self, params: Mapping[str, Tensor]) -> None:
        ties_merge_into(params, self.theta0, self.trims, self.scaling(), chunk_bytes=self.chunk_bytes)

    def _follow(self, device: torch.device) -> None:
        self.trims = [t if next(iter(t.values.values())).device == device else t.to(device) for t in self.trims]

    def stored(self) -> dict[str, int]:
        masks = sum(_bytes(t.mask) for t in self.trims)
        values = sum(_bytes(t.values) for t in self.trims)
        return {**super().stored(), f"{self.name}_masks": masks, f"{self.name}_values": values}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "trims": [t.state_dict() for t in self.trims]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.trims = [TrimmedDelta.from_state_dict(t) for t in state["trims"]]


MERGES: dict[type, type[Merge]] = {TaskArithmeticConfig: TaskArithmeticMerge, TIESConfig: TIESMerge,
                                    MagMaxConfig: MagMaxMerge}


def make_merge(params: Mapping[str, Tensor], cfg: MergingConfig, *, chunk_bytes: int | None = None) -> Merge:
    """The merge of ``cfg``'s method (its config class decides)."""
    return MERGES[type(cfg)](params, cfg, chunk_bytes=chunk_bytes)
