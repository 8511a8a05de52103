"""The project's continual-learning metrics as Avalanche ``PluginMetric`` s, for any ``EvaluationPlugin``.

The runner computes Avg, Last, Forgetting, BWT and (MTIL) Transfer from the accuracy matrix
(:mod:`runs.metrics`, docs/metrics.md); these metrics build the same matrix inside a plain Avalanche
loop, so an own script reports the numbers the runner's tables show::

    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), *continual_metrics("seen"), loggers=[...])
    strategy.eval(benchmark.test_stream)              # before training: the zero-shot row (optional)
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)          # row i of the matrix: every test experience

Each evaluation of the *whole* test stream after training on experience ``i`` is row ``i`` of the
matrix A (``A[i, j]`` = accuracy on test experience ``j``, the argmax of ``strategy.mb_output``
against ``strategy.mb_y``); an evaluation before any training is the zero-shot row and enters no
metric; an evaluation of part of the stream is left out. After row ``t`` each metric emits its
value over the rows so far, the square block ``A[:t, :t]`` (class-incremental metrics and
forgetting), so after the last experience it equals the runner's number. MTIL Transfer so far is
``(1/(T-1)) Σ_{k≥1} mean_{j<min(k,t)} A[j,k]`` (the zero-shot accuracy of dataset ``k`` under the
models trained before it; ZSCL §4.1), equal to :func:`runs.metrics.transfer` once ``t = T``.
``protocol``: ``"seen"`` (class-incremental, sample-weighted Avg / Last) or ``"task"`` (MTIL,
unweighted, ZSCL's definitions), as in the runner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import stream_type

from . import metrics as formulas

METRIC_KEYS = ("avg", "last", "forgetting", "bwt", "transfer")
TITLES = {"avg": "Avg", "last": "Last", "forgetting": "Forgetting", "bwt": "BWT", "transfer": "Transfer"}


def running_transfer(rows: np.ndarray) -> float:
    """MTIL Transfer from the first ``t`` rows of a ``(t, T)`` matrix (module docstring)."""
    t, n = rows.shape
    return float(np.mean([rows[: min(k, t), k].mean() for k in range(1, n)]))


class MatrixMetric(PluginMetric[float]):
    """One of Avg, Last, Forgetting, BWT, Transfer over the accuracy matrix built from whole-stream
    evaluations (module docstring); ``key`` one of :data:`METRIC_KEYS`."""

    def __init__(self, key: str, protocol: str = "seen") -> None:
        super().__init__()
        if key not in METRIC_KEYS:
            raise ValueError(f"key={key!r}; allowed: {', '.join(METRIC_KEYS)}")
        if protocol not in ("seen", "task"):
            raise ValueError(f"protocol={protocol!r}; allowed: seen, task")
        if key == "transfer" and protocol != "task":
            raise ValueError("transfer is an MTIL metric: use protocol='task'")
        self.key, self.protocol = key, protocol
        self.rows: dict[int, list[float]] = {}  # trained experiences - 1 -> accuracy per test experience
        self.sizes: list[int] = []  # test samples per experience
        self.zero_shot: list[float] | None = None
        self._counts: dict[int, list[int]] = {}  # test experience -> [correct, seen] of this evaluation
        self._value: float | None = None

    def __str__(self) -> str:
        return TITLES[self.key]

    def result(self) -> float | None:
        return self._value

    def reset(self) -> None:
        self.rows, self.sizes, self.zero_shot, self._value = {}, [], None, None

    def matrix(self) -> np.ndarray:
        """The rows so far as a ``(t, T)`` array (row i: after training experience i)."""
        return np.asarray([self.rows[i] for i in sorted(self.rows)], dtype=float)

    def before_eval(self, strategy: Any) -> None:
        self._counts = {}

    def after_eval_iteration(self, strategy: Any) -> None:
        super().after_eval_iteration(strategy)
        exp = int(strategy.experience.current_experience)
        right = int((strategy.mb_output.argmax(dim=1) == strategy.mb_y).sum())
        counts = self._counts.setdefault(exp, [0, 0])
        counts[0] += right
        counts[1] += len(strategy.mb_y)

    def after_eval(self, strategy: Any) -> list[MetricValue] | None:
        ids = sorted(self._counts)
        if not ids or ids != list(range(len(ids))):  # not the whole stream from experience 0
            return None
        row = [self._counts[j][0] / self._counts[j][1] for j in ids]
        self.sizes = [self._counts[j][1] for j in ids]
        trained = int(strategy.clock.train_exp_counter)
        if trained == 0:
            self.zero_shot = row
            return None
        self.rows[trained - 1] = row
        self._value = self._compute()
        if self._value is None:
            return None
        name = f"{TITLES[self.key]}/eval_phase/{stream_type(strategy.experience)}_stream"  # Avalanche's naming
        return [MetricValue(self, name, self._value, strategy.clock.train_iterations)]

    def _compute(self) -> float | None:
        rows = self.matrix()  # (t, T)
        t = rows.shape[0]
        if self.key == "transfer":
            return running_transfer(rows) if rows.shape[1] > 1 else None
        block, sizes = rows[:, :t], self.sizes[:t]
        if self.key == "forgetting":
            return formulas.average_forgetting(block)
        if self.key == "bwt":
            return formulas.bwt(block)
        values = formulas.summarize(block, sizes, self.protocol)
        return values[self.key]


def continual_metrics(protocol: str = "seen") -> list[MatrixMetric]:
    """Avg, Last, Forgetting, BWT (and Transfer for ``protocol="task"``), for an ``EvaluationPlugin``."""
    keys = [k for k in METRIC_KEYS if k != "transfer" or protocol == "task"]
    return [MatrixMetric(key, protocol) for key in keys]


__all__ = ["METRIC_KEYS", "MatrixMetric", "continual_metrics", "running_transfer"]
