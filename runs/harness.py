"""The bench harness: Avalanche's own training and evaluation loops, timed by a plugin.

Every speed / memory figure of ``python -m runs bench`` and every forward count of the step-cost tests
comes from here, so what is measured is the path that ships: a real ``SupervisedTemplate`` (``Naive``
plus a method's plugin, or the method's strategy built through its public constructor) training on a
tiny in-memory stream. Nothing re-enacts the template's hook order.

- :func:`repeated_minibatch` — one experience whose every minibatch is the same ``(x, y)``, in order
  (``dataset_benchmark`` over a dataset that indexes ``x`` modulo its length: no copies);
- :func:`naive` — ``Naive`` with a silent evaluator (no metric, no logger), cross-entropy, one epoch;
- :class:`StepTimer` — a plugin recording the wall time of every training iteration
  (``before_training_iteration`` → ``after_training_iteration``) or evaluation iteration
  (``before_eval_iteration`` → ``after_eval_iteration``), with ``torch.cuda.synchronize()`` at both ends
  on CUDA, and the peak memory from the first iteration on (:class:`MemoryProbe`);
- :func:`run_steps` — puts a :class:`StepTimer` first in the strategy's plugins (so its clock starts
  before any other plugin's ``before_training_iteration`` and stops before the template's clock
  advances), runs ``strategy.train`` (or ``strategy.eval``) on the experience, and returns the times;
- :class:`HookBracket` — two marker plugins put right before and right after one plugin in the
  strategy's list: the time and extra peak memory of what that plugin runs in the given hooks (e.g. the
  ConDU plugin's end of experience).

Memory (:class:`MemoryProbe`): on CUDA ``torch.cuda.reset_peak_memory_stats()`` at the start, then
``max_memory_allocated()`` − the memory allocated at the start; on the CPU the kernel's RSS high-water
mark is reset (``/proc/self/clear_refs``, Linux >= 4.0) and the peak is ``ru_maxrss``: meaningful per
process only (a caller that wants isolated figures runs one measurement per fresh process).
"""

from __future__ import annotations

import gc
import os
import resource
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.benchmarks import dataset_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import Dataset

# --------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (and so ``ru_maxrss``) to the current RSS; False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """``ru_maxrss`` of this process in bytes (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryProbe:
    """Peak memory of a section: CUDA allocator statistics, or this process's RSS (module docstring)."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.reset_ok = True  # CPU: every reset of the high-water mark was accepted

    def start(self) -> int:
        """Reset the peak; the memory in use now (the baseline)."""
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        self.reset_ok = reset_peak_rss() and self.reset_ok
        return rss_bytes()

    def peak(self) -> int:
        """The peak since :meth:`start`."""
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return peak_rss_bytes()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


# --------------------------------------------------------------------------- data and strategy


class _Repeated(Dataset):
    """``(x[i mod n], y[i mod n])`` for ``i < n · repeats``; ``targets`` as Avalanche's generators read them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, repeats: int) -> None:
        self.x, self.n = x, len(x)
        self.targets = [int(v) for v in y.tolist()] * repeats

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index % self.n], self.targets[index]


def repeated_minibatch(x: torch.Tensor, y: torch.Tensor, steps: int) -> Any:
    """One Avalanche experience of ``steps`` minibatches of ``len(x)``, each ``(x, y)`` in this order
    (with ``train_mb_size = len(x)`` and no shuffling: :func:`run_steps` passes ``shuffle=False``)."""
    if steps < 1:
        raise ValueError(f"repeated_minibatch: steps must be >= 1, got {steps}")
    data = _Repeated(x.cpu(), y.cpu(), steps)
    return dataset_benchmark([data], [data]).train_stream[0]


def silent_evaluator() -> EvaluationPlugin:
    """An evaluator with no metric and no logger (its "no loggers" warning is expected here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin()


def naive(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, batch_size: int, device: Any,
          plugins: Sequence[SupervisedPlugin] = (), criterion: Any = None) -> Naive:
    """Avalanche's ``Naive`` (a ``SupervisedTemplate``) as the benches drive it: cross-entropy, one
    epoch, train and eval minibatches of ``batch_size``, an evaluator with no metric and no logger."""
    return Naive(model=model, optimizer=optimizer,
                 criterion=torch.nn.CrossEntropyLoss() if criterion is None else criterion,
                 train_mb_size=batch_size, eval_mb_size=batch_size, train_epochs=1, device=device,
                 plugins=list(plugins), evaluator=silent_evaluator(), eval_every=-1)


# --------------------------------------------------------------------------- timing


@dataclass
class StepTimes:
    """What :class:`StepTimer` recorded: per-iteration wall times and the memory figures (bytes)."""

    ms: list[float] = field(default_factory=list)  # every iteration, warm-up included
    base_bytes: int = 0  # memory in use when the first iteration started (model, minibatch, optimizer object)
    peak_bytes: int = 0  # peak from the first iteration's start to the last iteration's end
    peak_reset: bool = True  # CPU: the RSS high-water mark could be reset at the first iteration

    def timed(self, warmup: int) -> list[float]:
        """The iterations after the first ``warmup``."""
        return self.ms[warmup:]

    def mean_ms(self, warmup: int) -> float:
        """Mean time of the timed iterations (0 when there is none)."""
        timed = self.timed(warmup)
        return sum(timed) / len(timed) if timed else 0.0


class StepTimer(SupervisedPlugin):
    """Times every training (``phase="train"``) or evaluation (``"eval"``) iteration of its strategy.

    The clock runs from the iteration's ``before_*_iteration`` to its ``after_*_iteration`` hook: the
    minibatch is already on the device, and everything the template and the other plugins run for the
    iteration (forward, loss, backward, a ZO step in ``before_update``, the optimizer step) is inside.
    On CUDA both ends synchronise. The memory baseline is taken at the first iteration's start.
    """

    def __init__(self, device: torch.device | str, phase: str = "train") -> None:
        super().__init__()
        if phase not in ("train", "eval"):
            raise ValueError(f"StepTimer phase={phase!r}: expected train or eval")
        self.phase = phase
        self.memory = MemoryProbe(device)
        self.times = StepTimes()
        self._start = 0.0

    def _begin(self) -> None:
        if not self.times.ms:
            self.times.base_bytes = self.memory.start()
            self.times.peak_reset = self.memory.reset_ok
        self.memory.sync()
        self._start = time.perf_counter()

    def _end(self) -> None:
        self.memory.sync()
        self.times.ms.append((time.perf_counter() - self._start) * 1000)
        self.times.peak_bytes = max(self.times.peak_bytes, self.memory.peak())

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        if self.phase == "train":
            self._begin()

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        if self.phase == "train":
            self._end()

    def before_eval_iteration(self, strategy: Any, **kwargs: Any) -> None:
        if self.phase == "eval":
            self._begin()

    def after_eval_iteration(self, strategy: Any, **kwargs: Any) -> None:
        if self.phase == "eval":
            self._end()


def run_steps(strategy: Any, experience: Any, *, train: bool = True) -> StepTimes:
    """``strategy.train(experience)`` (or ``strategy.eval([experience])``) with a :class:`StepTimer`
    first among its plugins for the call; the minibatches in the experience's order (no shuffling).

    Every bench configuration and the step-cost tests go through this function.
    """
    timer = StepTimer(strategy.device, "train" if train else "eval")
    strategy.plugins.insert(0, timer)
    try:
        if train:
            strategy.train(experience, eval_streams=[], shuffle=False)
        else:
            strategy.eval([experience])
    finally:
        strategy.plugins.remove(timer)
    return timer.times


# --------------------------------------------------------------------------- one plugin's hooks


@dataclass
class HookCost:
    """Time and extra peak memory of what the bracketed plugin ran in one hook call."""

    hook: str
    ms: float
    extra_bytes: int  # peak during the call − memory in use right before it (>= 0)
    peak_reset: bool = True


class _Marker(SupervisedPlugin):
    def __init__(self, bracket: HookBracket, opening: bool) -> None:
        super().__init__()
        self.bracket, self.opening = bracket, opening

    def _mark(self, hook: str) -> None:
        if hook in self.bracket.hooks:
            (self.bracket.open if self.opening else self.bracket.close)(hook)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._mark("after_training_exp")

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        self._mark("after_training")

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._mark("before_training_exp")

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._mark("before_eval_exp")

    def after_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._mark("after_eval_exp")


class HookBracket:
    """Measures one plugin's work in ``hooks`` (some of before/after_training_exp, after_training,
    before/after_eval_exp): :meth:`around` puts a marker plugin right before it and one right after it
    in the strategy's list, so each hook call is timed from the first marker to the second."""

    HOOKS: tuple[str, ...] = ("before_training_exp", "after_training_exp", "after_training", "before_eval_exp",
                              "after_eval_exp")

    def __init__(self, device: torch.device | str, hooks: Sequence[str], *, memory: bool = True) -> None:
        unknown = sorted(set(hooks) - set(self.HOOKS))
        if unknown:
            raise ValueError(f"HookBracket: unknown hooks {unknown}; allowed: {', '.join(self.HOOKS)}")
        self.hooks, self.memory = tuple(hooks), MemoryProbe(device) if memory else None
        self.costs: list[HookCost] = []
        self._start, self._base = 0.0, 0

    def around(self, strategy: Any, plugin: SupervisedPlugin) -> HookBracket:
        """Insert the markers around ``plugin`` in ``strategy.plugins``; returns ``self``."""
        index = strategy.plugins.index(plugin)
        strategy.plugins.insert(index + 1, _Marker(self, opening=False))
        strategy.plugins.insert(index, _Marker(self, opening=True))
        return self

    def open(self, hook: str) -> None:
        if self.memory is not None:
            self._base = self.memory.start()
        self._start = time.perf_counter()

    def close(self, hook: str) -> None:
        if self.memory is not None:
            self.memory.sync()
        ms = (time.perf_counter() - self._start) * 1000
        extra = max(self.memory.peak() - self._base, 0) if self.memory is not None else 0
        self.costs.append(HookCost(hook, ms, extra, self.memory.reset_ok if self.memory is not None else True))
