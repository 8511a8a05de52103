"""Compute precision of the CLIP classifier's forwards: names, autocast dtypes, TF32. Imports only torch.

Two settings, two meanings (docs/speed.md, "Mixed precision"):

- ``train.precision`` is the **compute** precision (:data:`PRECISIONS`): ``fp32`` (plain float32),
  ``tf32`` (float32 tensors, CUDA matmuls / convolutions on TF32 tensor cores), ``bf16`` / ``fp16``
  (``torch.autocast``: matmuls and convolutions in the low dtype, weights cast on the fly, so the
  trainable "master" weights and their gradients stay float32). ``auto`` is resolved by the runner
  (``runs.fingerprint.resolve_precision``: bf16 on CUDA, fp32 elsewhere) before it reaches the model.
- ``model.precision`` is the frozen backbone's **storage** dtype (:data:`STORAGE_PRECISIONS`): bf16 /
  fp16 halve its bytes; trainable tensors stay float32 whatever it is. A low storage dtype needs
  autocast to that same dtype (:func:`check_compatible`).

fp16 also needs a gradient scaler (``strategies.training.GradScalerPlugin``); bf16 has float32's range
and does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # compute precisions the model runs under
TRAIN_PRECISIONS = ("auto", *PRECISIONS)  # train.precision: auto = bf16 on CUDA, fp32 elsewhere
STORAGE_PRECISIONS = ("fp32", "bf16", "fp16")  # model.precision: dtype of the frozen backbone
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    """``precision`` if it is a compute precision, else ValueError listing them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; allowed: {' | '.join(PRECISIONS)}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a compute precision: bf16/fp16 -> that dtype, fp32/tf32 -> None (no autocast)."""
    return _DTYPES.get(check_precision(precision))


def storage_dtype(precision: str) -> torch.dtype:
    """The frozen backbone's dtype for ``model.precision`` (fp32 | bf16 | fp16)."""
    if precision not in STORAGE_PRECISIONS:
        raise ValueError(f"model.precision {precision!r}; allowed: {' | '.join(STORAGE_PRECISIONS)} (mixed "
                         f"precision is train.precision)")
    return _DTYPES.get(precision, torch.float32)


def check_compatible(storage: str, compute: str) -> None:
    """ValueError unless a bf16/fp16 frozen backbone runs under autocast of its own dtype.

    Without autocast a float32 input meets bf16 weights (``conv1``: "Input type and weight type should
    be the same") and the float32 units meet bf16 activations; autocast casts both on the fly. The
    other low dtype is refused too: on the CPU, ``layer_norm`` is not autocast and fails on fp16
    activations with bf16 weights, and the weights would be rounded twice anyway.
    """
    if storage_dtype(storage) is not torch.float32 and compute != storage:
        raise ValueError(f"model.precision={storage} stores the frozen backbone in {storage}, which needs "
                         f"train.precision {storage} (autocast to the same dtype), not {compute}; set "
                         f"train.precision to {storage} or model.precision to fp32")


@contextmanager
def autocast(precision: str, device_type: str) -> Iterator[None]:
    """``torch.autocast(device_type, dtype)`` for bf16 / fp16; nothing for fp32 / tf32.

    TF32 is not scoped here: the backward pass runs outside any forward's context, so it is the
    process-wide switch :func:`set_tf32`.
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def set_tf32(enabled: bool) -> None:
    """Allow (True) or forbid (False) TF32 in float32 matmuls and cuDNN convolutions.

    **Process-wide**: it sets ``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``
    and ``torch.set_float32_matmul_precision("high" | "highest")``, so it affects every model and
    every tensor of the process until set again. It has an effect on CUDA (Ampere and later); on the
    CPU the matmul precision "high" may let oneDNN use a reduced-precision path on CPUs that have
    one (no change measured on the development machine). cuDNN's own default is TF32 *on*, so
    ``set_tf32(False)`` is what makes fp32 convolutions plain float32 on CUDA.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


TF32Switches = tuple[bool, bool, str]  # (cuda matmul allow_tf32, cudnn allow_tf32, float32 matmul precision)


def tf32_switches() -> TF32Switches:
    """The three process-wide switches :func:`set_tf32` sets, to put them back with :func:`restore_tf32`."""
    return (bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32),
            torch.get_float32_matmul_precision())


def restore_tf32(switches: TF32Switches) -> None:
    """Put back switches read by :func:`tf32_switches`."""
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = switches[0], switches[1]
    torch.set_float32_matmul_precision(switches[2])
