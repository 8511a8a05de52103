"""Continual-learning metrics from an accuracy matrix (pure numpy).

``A[i, j]`` = accuracy on test experience ``j`` after training step ``i`` (``T x T``, rows = steps,
columns = experiences); ``n_j`` = size of test experience ``j``; an optional zero-shot row ``z[j]``
is the accuracy before any training. Entries a formula does not read may be NaN (e.g. the upper
triangle of a class-incremental run that only evaluates seen experiences). Units are whatever
``A`` holds (fractions or %); no rescaling.

Class-incremental (``protocol="seen"``):

- Avg (average incremental accuracy) = (1/T) sum_i [ sum_{j<=i} n_j A[i,j] / sum_{j<=i} n_j ]
  -- at every step, the accuracy over all test samples of the experiences seen so far (sample
  weighted), which equals accuracy on all seen classes when evaluation scores the seen label space.
- Last = sum_j n_j A[T-1,j] / sum_j n_j.
- Forgetting (Chaudhry et al. 2018) = (1/(T-1)) sum_{j<T-1} [ max_{j<=i<T-1} A[i,j] - A[T-1,j] ]
  (the max runs over the steps at which ``j`` had been learned; Avalanche's ``StreamForgetting``
  instead subtracts from the accuracy right after learning ``j``, i.e. ``A[j,j]``, which is -BWT).
- BWT (Lopez-Paz & Ranzato 2017) = (1/(T-1)) sum_{j<T-1} [ A[T-1,j] - A[j,j] ].

MTIL (``protocol="task"``, ZSCL's definitions; unweighted over datasets):

- Transfer = (1/(T-1)) sum_{i=1}^{T-1} [ (1/i) sum_{j<i} A[j,i] ] (0-based i; 1-based "i >= 2" in
  ZSCL): accuracy on dataset i of the models trained on the datasets before it. The first dataset
  has no such model and is excluded; the zero-shot row is not used.
- Avg = (1/T^2) sum_{i,j} A[i,j];  Last = (1/T) sum_j A[T-1,j].
- Forgetting and BWT as above, unweighted.
"""

from __future__ import annotations

import numpy as np


def _check(matrix, sizes=None) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(matrix, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {a.shape}")
    t = a.shape[0]
    n = np.ones(t) if sizes is None else np.asarray(sizes, dtype=float)
    if n.shape != (t,) or np.any(n <= 0):
        raise ValueError(f"sizes must be {t} positive numbers, got {n.tolist()}")
    return a, n


def seen_accuracy_per_step(matrix, sizes=None) -> list[float]:
    """Accuracy on everything trained so far after each step: sum_{j<=i} n_j A[i,j] / sum_{j<=i} n_j."""
    a, n = _check(matrix, sizes)
    return [float(np.dot(a[i, : i + 1], n[: i + 1]) / n[: i + 1].sum()) for i in range(a.shape[0])]


def average_incremental_accuracy(matrix, sizes=None) -> float:
    """(1/T) sum_i sum_{j<=i} n_j A[i,j] / sum_{j<=i} n_j (sample-weighted seen accuracy per step)."""
    return float(np.mean(seen_accuracy_per_step(matrix, sizes)))


def last_accuracy(matrix, sizes=None) -> float:
    """sum_j n_j A[T-1,j] / sum_j n_j."""
    a, n = _check(matrix, sizes)
    return float(np.dot(a[-1], n) / n.sum())


def average_forgetting(matrix) -> float:
    """(1/(T-1)) sum_{j<T-1} max_{j<=i<T-1} A[i,j] - A[T-1,j] (Chaudhry et al.); 0 when T == 1."""
    a, _ = _check(matrix)
    t = a.shape[0]
    if t == 1:
        return 0.0
    return float(np.mean([a[j : t - 1, j].max() - a[t - 1, j] for j in range(t - 1)]))


def bwt(matrix) -> float:
    """(1/(T-1)) sum_{j<T-1} A[T-1,j] - A[j,j]; 0 when T == 1."""
    a, _ = _check(matrix)
    t = a.shape[0]
    if t == 1:
        return 0.0
    return float(np.mean([a[t - 1, j] - a[j, j] for j in range(t - 1)]))


def transfer(matrix) -> float:
    """MTIL Transfer: (1/(T-1)) sum_{i>=1} mean_{j<i} A[j,i] (first dataset and zero-shot row excluded)."""
    a, _ = _check(matrix)
    t = a.shape[0]
    if t == 1:
        raise ValueError("transfer needs at least two datasets")
    return float(np.mean([a[:i, i].mean() for i in range(1, t)]))


def mtil_avg(matrix) -> float:
    """MTIL Avg: mean of every entry of A."""
    a, _ = _check(matrix)
    return float(a.mean())


def mtil_last(matrix) -> float:
    """MTIL Last: mean of the last row of A."""
    a, _ = _check(matrix)
    return float(a[-1].mean())


def summarize(matrix, sizes=None, protocol: str = "seen", zero_shot_row=None) -> dict[str, float]:
    """The metrics of a protocol: "seen" -> avg, last, forgetting, bwt; "task" -> transfer too.

    ``zero_shot_row`` (accuracy per experience before training) adds ``zero_shot`` (its mean; sample
    weighted for "seen"); it never enters the other metrics.
    """
    a, n = _check(matrix, sizes)
    if protocol == "seen":
        out = {"avg": average_incremental_accuracy(a, n), "last": last_accuracy(a, n)}
    elif protocol == "task":
        out = {"avg": mtil_avg(a), "last": mtil_last(a)}
        if a.shape[0] > 1:
            out["transfer"] = transfer(a)
    else:
        raise ValueError(f"protocol must be 'seen' or 'task', got {protocol!r}")
    out["forgetting"] = average_forgetting(a)
    out["bwt"] = bwt(a)
    if zero_shot_row is not None:
        z = np.asarray(zero_shot_row, dtype=float)
        if z.shape != (a.shape[0],):
            raise ValueError(f"zero_shot_row must have {a.shape[0]} entries, got shape {z.shape}")
        out["zero_shot"] = float(np.dot(z, n) / n.sum()) if protocol == "seen" else float(z.mean())
    return out
