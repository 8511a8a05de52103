"""RAIL's options (:class:`RAILConfig`) and its checks on a suite run (docs/methods/rail.md).

Each field carries its help text and allowed range (:mod:`strategies.options`). :func:`check_run` is the
method's ``MethodSpec.check``: the suite validator calls it before anything is written, so the dual
variant's memory refusal (:func:`check_kernel_memory`) is a configuration error (exit 2) naming
``method.max_kernel_memory``. The number of stored features N is counted from the stream's training
targets (the stream is built without images and without downloading); where its data is absent the
check cannot count and :class:`~.plugin.RAILPlugin` checks again before its first experience.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from ..options import COUNT, POSITIVE, UNIT_INTERVAL, option
from .maths import kernel_memory_bytes

MIB = 2**20


@dataclass
class RAILConfig:
    variant: Literal["primal", "dual"] = option("dual",
        "primal: random projection + recursive ridge regression; dual: RBF kernel ridge regression")
    projection_width: int = option(15000, "primal: width d of the frozen random ReLU projection", range=COUNT)
    ridge: float = option(0.1, "primal: ridge λ of the recursive least squares", range=POSITIVE)
    gamma: float = option(0.1, "dual: RBF kernel γ in exp(−γ‖x − x'‖²)", range=POSITIVE)
    kernel_ridge: float = option(0.001, "dual: ridge λ of the kernel ridge regression", range=POSITIVE)
    fusion_weight: float = option(0.8,
        "w in (1 − w)·p_zero-shot + w·adapter where the zero-shot arg-max is a seen class", range=UNIT_INTERVAL)
    max_kernel_memory: float = option(32768.0,
        "dual: MiB the kernel solve may hold (16·N² bytes + features); refused before any work above it",
        range=POSITIVE)
    kernel_shots: int | None = option(None,
        "dual: keep at most this many training images per class (seeded subsample; a deviation); None: all",
        range=COUNT)


def kernel_memory_error(n: int, dim: int, classes: int, max_mib: float) -> str | None:
    """The refusal message when N stored features need more than ``max_mib`` MiB (else None); it starts
    with the field it names, so the suite validator can prefix file and run."""
    need = kernel_memory_bytes(n, dim, classes)
    if need <= max_mib * MIB:
        return None
    need_mib = math.ceil(need / MIB * 10) / 10  # rounded up: the value shown is enough
    return (f"method.max_kernel_memory = {max_mib:g} MiB: the dual variant needs {need_mib:.1f} MiB for "
            f"N = {n} stored training features (kernel and its Cholesky factor, 16·N² bytes, plus features and "
            f"targets; docs/methods/rail.md#memory); allowed: method.max_kernel_memory >= {need_mib:.1f}, "
            f"method.kernel_shots (a per-class subsample, a deviation) or method.variant: primal")


def check_kernel_memory(n: int, dim: int, classes: int, cfg: RAILConfig) -> None:
    """ValueError with :func:`kernel_memory_error`'s message when the dual variant would not fit."""
    if cfg.variant != "dual":
        return
    message = kernel_memory_error(n, dim, classes, cfg.max_kernel_memory)
    if message is not None:
        raise ValueError(message)


def stored_count(class_counts: dict[int, int], shots: int | None) -> int:
    """N: the training features the dual variant stores, ``min(n_c, shots)`` per class with a cap."""
    return sum(min(n, shots) if shots is not None else n for n in class_counts.values())


def check_run(run: Any) -> None:
    """RAIL's facts about a suite run known before any work; ``ValueError`` naming the field.

    ``run`` is a ``runs.config.RunConfig`` (``run.method.cfg`` a :class:`RAILConfig`).
    """
    cfg: RAILConfig = run.method.cfg
    if cfg.variant == "primal" and cfg.kernel_shots is not None:
        raise ValueError(f"method.kernel_shots = {cfg.kernel_shots}: applies to variant dual only; allowed: "
                         f"method.kernel_shots: null, or method.variant: dual")
    if cfg.variant != "dual":
        return
    counted = _stream_class_counts(run.stream.name, run.data_root, run.stream.cfg)
    if counted is None:
        return  # data absent here: the plugin checks again before its first experience
    counts, classes = counted
    check_kernel_memory(stored_count(counts, cfg.kernel_shots), embed_dim(run.model.arch), classes, cfg)


def embed_dim(arch: str, default: int = 512) -> int:
    """The image-feature width D of an open_clip architecture, from its config (``default`` if unknown)."""
    import open_clip

    from ..clip.model import register_model_configs

    register_model_configs()
    return int((open_clip.get_model_config(arch) or {}).get("embed_dim", default))


def class_counts(stream: Any) -> dict[int, int]:
    """{global class id: training images} over every experience of an Avalanche train stream (targets
    only: no image is read)."""
    counts: Counter[int] = Counter()
    for experience in stream:
        counts.update(int(t) for t in experience.dataset.targets)
    return dict(counts)


_COUNTS: dict[tuple[str, str, str], tuple[dict[int, int], int] | None] = {}


def _stream_class_counts(name: str, data_root: str, cfg: Any) -> tuple[dict[int, int], int] | None:
    """(class counts of the train stream, number of classes), or None when its data is not available
    here. Built once per (stream, options, data root) and process; never downloads."""
    key = (name, repr(cfg), data_root)  # a config dataclass is not hashable: its repr is the key
    if key not in _COUNTS:
        _COUNTS[key] = _count_stream(name, data_root, cfg)
    return _COUNTS[key]


def _count_stream(name: str, data_root: str, cfg: Any) -> tuple[dict[int, int], int] | None:
    from benchmarks import STREAMS, DatasetMissingError, StreamContext

    ctx = StreamContext(data_root=data_root, train_transform=None, eval_transform=None, image_size=8,
                        download=False)
    try:
        bench = STREAMS[name].build(cfg, ctx)
    except (DatasetMissingError, FileNotFoundError, RuntimeError):  # torchvision: "Dataset not found"
        return None
    return class_counts(bench.scenario.train_stream), bench.n_classes
