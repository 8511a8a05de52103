"""ConDU fusion: task deltas, election, unify / decouple and task triggers. Pure torch maths.

ConDU §3 (task deltas, unifying by the EMR-Merging election, decoupling; docs/methods/condu.md). A
model is a ``dict[str, Tensor]`` (a state dict or ``dict(model.named_parameters())``); every function here checks
keys and shapes key by key and raises ``ValueError`` naming the key.

Choices made here (see the docstrings for the formulas):
- sign flag: a zero mean elects −1, exactly as the code (``(mean > 0) * 2 - 1``);
- rescaler with a zero denominator (Mⁱ ⊙ U = 0 everywhere, i.e. task i lost every entry or δⁱ = 0):
  λ_i = 1. The decoupled delta is then 0 whatever λ_i is; 1 keeps it finite (no inf / nan);
- magnitudes are accumulated in float64; masks are bit-packed (first entry in the high bit, as
  ``numpy.packbits``) and stored on ``mask_device`` (CPU by default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

RESCALERS = ("mean_abs", "l1")
RESCALER_BYTES = 4  # one float32 per task
_BIT_SHIFTS = (7, 6, 5, 4, 3, 2, 1, 0)  # big-endian within a byte, like numpy.packbits

Delta = dict[str, Tensor]


# --------------------------------------------------------------------------- validation


def _check_layout(
    ref: Mapping[str, Any], other: Mapping[str, Any], what: str, *, subset: bool = False
) -> None:
    """Raise ValueError unless `other` has the keys of `ref` (all, or only a subset) with equal shapes."""
    missing = [k for k in ref if k not in other]
    extra = [k for k in other if k not in ref]
    if missing and not subset:
        raise ValueError(f"{what}: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise ValueError(f"{what}: unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for key in other:
        a, b = _shape_of(ref[key]), _shape_of(other[key])
        if a != b:
            raise ValueError(f"{what}: shape mismatch for key {key!r}: {tuple(a)} vs {tuple(b)}")


def _shape_of(x: Tensor | torch.Size | tuple[int, ...]) -> torch.Size:
    return x.shape if isinstance(x, Tensor) else torch.Size(x)


def _check_rescaler(rescaler: str) -> None:
    if rescaler not in RESCALERS:
        raise ValueError(f"rescaler must be one of {RESCALERS}, got {rescaler!r}")


def _check_float(delta: Mapping[str, Tensor], what: str) -> None:
    for key, value in delta.items():
        if not value.is_floating_point():
            raise ValueError(f"{what}: key {key!r} is not a float tensor ({value.dtype})")


# --------------------------------------------------------------------------- delta, merge / unmerge


def task_delta(theta: Mapping[str, Tensor], theta0: Mapping[str, Tensor]) -> Delta:
    """δ = θ − θ⁰ over the float tensors of θ⁰ (ConDU §3, task delta); detached, on θ's device.

    Pass only what counts as the model's tensors (e.g. ``named_parameters`` without buffers such as
    the attention mask); non-float tensors of θ⁰ are skipped, and θ must hold the same float keys.
    """
    ref = {k: v for k, v in theta0.items() if v.is_floating_point()}
    other = {k: v for k, v in theta.items() if k in ref or v.is_floating_point()}
    _check_layout(ref, other, "task_delta(theta, theta0)")
    _check_float(other, "task_delta(theta)")
    with torch.no_grad():
        return {k: theta[k].detach() - theta0[k].detach().to(theta[k]) for k in ref}


def _apply_delta(params: Mapping[str, Tensor], delta: Mapping[str, Tensor], scale: float) -> None:
    """θ ← θ + scale·δ in place, every key of δ checked before any tensor is changed."""
    _check_layout(params, delta, "apply delta(params, delta)", subset=True)
    with torch.no_grad():
        for key, d in delta.items():
            params[key].add_(d.to(params[key]), alpha=scale)


def merge_delta(params: Mapping[str, Tensor], delta: Mapping[str, Tensor], alpha: float = 1.0) -> None:
    """Merge: θ ← θ + α·δ in place (keys of δ must be in θ with equal shapes)."""
    _apply_delta(params, delta, alpha)


def unmerge_delta(params: Mapping[str, Tensor], delta: Mapping[str, Tensor], alpha: float = 1.0) -> None:
    """Unmerge: θ ← θ − α·δ in place; inverse of ``merge_delta`` up to rounding."""
    _apply_delta(params, delta, -alpha)


# --------------------------------------------------------------------------- pack / unpack


def pack_mask(mask: Tensor) -> Tensor:
    """Pack a bool tensor (any shape, row-major) into ceil(n/8) uint8 bytes, first entry in the high bit."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_mask expects a bool tensor, got {mask.dtype}")
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8)  # (n/8, 8)
    packed = torch.zeros(bits.shape[0], dtype=torch.uint8, device=mask.device)
    for col, shift in enumerate(_BIT_SHIFTS):
        packed |= bits[:, col] << shift
    return packed


def unpack_mask(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of ``pack_mask``: uint8 bytes → bool tensor of `shape`, on the device of `packed`."""
    shape = torch.Size(shape)
    n = shape.numel()
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (n + 7) // 8:
        raise ValueError(
            f"unpack_mask: expected a 1-d uint8 tensor of {(n + 7) // 8} bytes for shape {tuple(shape)}, "
            f"got {packed.dtype} {tuple(packed.shape)}"
        )
    shifts = torch.tensor(_BIT_SHIFTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1  # (n/8, 8)
    return bits.reshape(-1)[:n].bool().reshape(shape)


# --------------------------------------------------------------------------- trigger


@dataclass
class Trigger:
    """Task trigger of task i (ConDU §3, decoupling): masks Mⁱ, bit-packed per tensor, and rescaler λ_i."""

    mask: dict[str, Tensor]  # key -> uint8 tensor of ceil(numel/8) bytes (see pack_mask)
    shapes: dict[str, torch.Size]  # key -> shape of the unpacked mask (= shape of the delta tensor)
    rescaler: float  # λ_i

    def __post_init__(self) -> None:
        self.shapes = {k: torch.Size(s) for k, s in self.shapes.items()}
        self.rescaler = float(self.rescaler)
        if set(self.mask) != set(self.shapes):
            diff = sorted(set(self.mask) ^ set(self.shapes))
            raise ValueError(f"Trigger: mask keys and shape keys differ: {diff}")
        for key, packed in self.mask.items():
            n = self.shapes[key].numel()
            if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (n + 7) // 8:
                raise ValueError(f"Trigger: mask for key {key!r} is not {(n + 7) // 8} packed uint8 bytes")

    def unpack(self, key: str) -> Tensor:
        """Mⁱ for one tensor, as a bool tensor."""
        return unpack_mask(self.mask[key], self.shapes[key])

    def nbytes(self) -> int:
        """Storage of the trigger: mask bytes + 4 bytes for the rescaler."""
        return sum(p.numel() for p in self.mask.values()) + RESCALER_BYTES

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and python scalars (torch.save / pickle friendly)."""
        return {
            "mask": dict(self.mask),
            "shapes": {k: list(s) for k, s in self.shapes.items()},
            "rescaler": self.rescaler,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Trigger:
        return cls(mask=dict(state["mask"]), shapes=dict(state["shapes"]), rescaler=state["rescaler"])


# --------------------------------------------------------------------------- elect / unify


def elect(deltas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Election over stacked deltas (T, *shape) (ConDU §3, unifying; EMR-Merging's election).

    s = +1 if mean_i δⁱ > 0 else −1 (a zero mean gives −1, as the code);
    Mⁱ = [δⁱ·s > 0];  U = s · max_i |δⁱ|·Mⁱ.  Returns (s, U, M) with M bool of shape (T, *shape).
    """
    if deltas.shape[0] == 0:
        raise ValueError("elect needs at least one delta")
    signs = torch.where(deltas.mean(0) > 0, 1.0, -1.0).to(deltas.dtype)  # (*shape)
    masks = deltas * signs > 0  # (T, *shape)
    unified = signs * (deltas.abs() * masks).amax(0)  # (*shape)
    return signs, unified, masks


def _rescalers(num: Tensor, den: Tensor) -> list[float]:
    """λ_i = num_i / den_i; λ_i = 1 where den_i = 0 (then Mⁱ ⊙ U = 0 and δ̃ⁱ = 0 whatever λ_i)."""
    lost = (den == 0) & (num > 0)
    if lost.any():
        logger.warning("ConDU unify: tasks %s lost every entry of the election; their decoupled delta is 0",
                       lost.nonzero().flatten().tolist())
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), 1.0).tolist()


# --------------------------------------------------------------------------- chunks
#
# Every step of unify / decouple is element-wise except the rescaler sums. Tensors are therefore
# processed as flat element ranges ("chunks") of bounded size, so the temporaries of a session are
# ~BYTES_PER_TASK_ELEMENT · T · chunk whatever the tensor sizes. The sums are made independent of the
# chunk size: each tensor is cut into a fixed grid of SUM_BLOCK elements, each block is summed by one
# reduction (float64) of exactly its elements, and a tensor's block sums are added by one reduction at
# the end. Chunks are whole numbers of blocks (so also of mask bytes), hence any chunk size gives
# bit-identical U, masks and rescalers.

SUM_BLOCK = 4096  # elements per block of the rescaler sums (a multiple of 8: whole mask bytes)
CHUNK_BYTES = 64 * 2**20  # default budget for a chunk's temporaries (capped at 1/16 of the delta's size)
BYTES_PER_TASK_ELEMENT = 24  # temporaries per chunk entry and task: stack 4, Mⁱ 1, Mⁱ⊙U 4, |x| 4, float64 sums 8, …

StackFill = Callable[[str, int, int], Tensor]  # (key, start, stop) -> the T deltas' chunk, (T, stop - start)


def _chunk_elements(sizes: Mapping[str, int], n_tasks: int, chunk_bytes: int | None) -> int:
    """Elements per chunk: ``chunk_bytes / (24 · T)`` rounded down to whole SUM_BLOCKs (≥ 1 block).

    ``chunk_bytes=None``: min(CHUNK_BYTES, 1/16 of the fp32 size of the delta), so a small model's
    chunks stay small against one model copy too (the allocator's fragmentation adds to the
    temporaries: on CPU the measured extra RSS is a few times the budget).
    """
    if chunk_bytes is None:
        chunk_bytes = max(min(CHUNK_BYTES, 4 * sum(sizes.values()) // 16), 1)
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    blocks = chunk_bytes // (BYTES_PER_TASK_ELEMENT * max(n_tasks, 1) * SUM_BLOCK)
    return SUM_BLOCK * max(int(blocks), 1)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """Element ranges [start, stop) covering 0..n, ``size`` a multiple of SUM_BLOCK."""
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _block_abs_sums(x: Tensor) -> Tensor:
    """Σ|x| per task over each SUM_BLOCK of a chunk (T, c) starting on the block grid: (T, ⌈c/B⌉) float64."""
    full = x.shape[1] // SUM_BLOCK * SUM_BLOCK
    parts = []
    if full:
        parts.append(x[:, :full].abs().reshape(x.shape[0], -1, SUM_BLOCK).sum(-1, dtype=torch.float64))
    if full < x.shape[1]:
        parts.append(x[:, full:].abs().sum(-1, keepdim=True, dtype=torch.float64))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _pack_rows(masks: Tensor) -> Tensor:
    """:func:`pack_mask` of each row of a bool (R, c): (R, ⌈c/8⌉) uint8."""
    pad = (-masks.shape[1]) % 8
    bits = torch.nn.functional.pad(masks, (0, pad)).view(masks.shape[0], -1, 8).to(torch.uint8)  # (R, c/8, 8)
    shifts = torch.tensor(_BIT_SHIFTS, dtype=torch.uint8, device=masks.device)
    return (bits << shifts).sum(-1, dtype=torch.uint8)  # disjoint bits: the sum is the bitwise or


def _unpack_rows(packed: Tensor, n: int) -> Tensor:
    """:func:`unpack_mask` of each row of (R, ⌈n/8⌉) uint8: bool (R, n)."""
    shifts = torch.tensor(_BIT_SHIFTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (R, n/8, 8)
    return bits.reshape(packed.shape[0], -1)[:, :n].bool()


def _mask_rows(triggers: list[Trigger], key: str, start: int, stop: int, device: torch.device) -> Tensor:
    """Mⁱ[start:stop] of every trigger (``start`` on the block grid): bool (R, stop − start) on ``device``."""
    rows = torch.stack([t.mask[key][start // 8:(stop + 7) // 8] for t in triggers])  # (R, bytes)
    return _unpack_rows(rows.to(device), stop - start)


def _decoupled_rows(u: Tensor, triggers: list[Trigger], key: str, start: int, stop: int, out: Tensor) -> None:
    """out = δ̃ⁱ[start:stop] = (U ⊙ Mⁱ)·λ_i per trigger, (R, c): the float operations of
    :func:`decouple_reference` (λ_i rounded to U's dtype, then one multiply)."""
    torch.mul(u, _mask_rows(triggers, key, start, stop, u.device), out=out)
    out *= torch.tensor([t.rescaler for t in triggers], dtype=out.dtype, device=out.device)[:, None]


def _flat(x: Tensor) -> Tensor:
    """A flat view (contiguous tensors) — writes through it reach ``x``."""
    if not x.is_contiguous():
        raise ValueError("ConDU fusion needs contiguous tensors (flat chunk views)")
    return x.view(-1)


# --------------------------------------------------------------------------- elect / unify


def _elect_chunked(
    shapes: Mapping[str, torch.Size],
    fill: StackFill,
    out_unified: Mapping[str, Tensor],
    out_masks: list[dict[str, Tensor]],
    rescaler: str,
    chunk_bytes: int | None,
) -> list[float]:
    """Elect chunk by chunk over the T = len(out_masks) deltas; write U and packed Mⁱ; return the λ_i.

    ``fill`` reads a chunk of every delta before that chunk of ``out_unified`` / ``out_masks`` is
    written, so the outputs may be the very tensors it reads from (in-place sessions).
    """
    n_tasks = len(out_masks)
    size = _chunk_elements({k: s.numel() for k, s in shapes.items()}, n_tasks, chunk_bytes)
    # Preallocated accumulators: no small tensor outlives its chunk, which would fragment the heap
    # between the chunks' large temporaries (measured: RSS then grows ~1 chunk per chunk on CPU).
    totals: Tensor | None = None  # (2, keys, T) float64: num, den per tensor
    for index, (key, shape) in enumerate(shapes.items()):
        n, out = shape.numel(), _flat(out_unified[key])
        blocks: Tensor | None = None  # (2, T, ⌈n/B⌉) float64 block sums
        for start, stop in _chunks(n, size):
            stack = fill(key, start, stop)  # (T, c)
            if blocks is None:
                blocks = stack.new_zeros((2, n_tasks, -(-n // SUM_BLOCK)), dtype=torch.float64)
            _, u, m = elect(stack)  # (c,), (T, c)
            out[start:stop] = u
            packed = _pack_rows(m).to(out_masks[0][key].device)  # (T, c/8)
            for i in range(n_tasks):
                out_masks[i][key][start // 8:start // 8 + packed.shape[1]] = packed[i]
            first, last = start // SUM_BLOCK, -(-stop // SUM_BLOCK)
            blocks[0, :, first:last] = _block_abs_sums(stack)
            blocks[1, :, first:last] = _block_abs_sums(m * u)  # Mⁱ ⊙ U
            del stack, u, m, packed
        if blocks is None:  # a tensor with no entries adds nothing
            continue
        if totals is None:
            totals = blocks.new_zeros((2, len(shapes), n_tasks))
        totals[:, index] = blocks.sum(2) / (n if rescaler == "mean_abs" else 1)  # mean|x| or ‖x‖₁
    if totals is None:
        totals = torch.zeros((2, 0, n_tasks), dtype=torch.float64)
    num, den = totals.cpu().sum(1)  # (T,) each: Σ over tensors
    return _rescalers(num, den)


def _new_masks(shapes: Mapping[str, torch.Size], device: torch.device | str) -> dict[str, Tensor]:
    return {k: torch.zeros((s.numel() + 7) // 8, dtype=torch.uint8, device=device) for k, s in shapes.items()}


def _session_fill(unified: Mapping[str, Tensor], triggers: list[Trigger], new_chunk: StackFill) -> StackFill:
    """Chunks of [δ̃¹ … δ̃ᵗ⁻¹ (decoupled from U), δᵗ (``new_chunk``)], on the device of δᵗ."""
    def fill(key: str, start: int, stop: int) -> Tensor:
        new = new_chunk(key, start, stop)
        stack = new.new_empty((len(triggers) + 1, stop - start))  # (T, c)
        if triggers:
            u = _flat(unified[key])[start:stop].to(new.device)
            _decoupled_rows(u, triggers, key, start, stop, stack[:-1])
        stack[-1] = new
        return stack

    return fill


def unify_deltas(
    deltas: list[Mapping[str, Tensor]],
    *,
    rescaler: str = "mean_abs",
    mask_device: torch.device | str = "cpu",
    chunk_bytes: int | None = None,
) -> tuple[Delta, list[Trigger]]:
    """One-shot election over explicit deltas δ¹…δᵀ (EMR-Merging): returns U and the T triggers.

    Chunked (see "chunks" above): any ``chunk_bytes`` gives bit-identical results.
    """
    _check_rescaler(rescaler)
    if not deltas:
        raise ValueError("unify_deltas needs at least one delta")
    for i, d in enumerate(deltas):
        _check_layout(deltas[0], d, f"unify_deltas(deltas[{i}])")
        _check_float(d, f"unify_deltas(deltas[{i}])")
    first = deltas[0]
    shapes = {k: v.shape for k, v in first.items()}
    aligned = [{k: d[k].detach().to(first[k]).contiguous() for k in first} for d in deltas]

    def fill(key: str, start: int, stop: int) -> Tensor:
        return torch.stack([_flat(d[key])[start:stop] for d in aligned])  # (T, c)

    unified = {k: torch.empty_like(v, memory_format=torch.contiguous_format) for k, v in first.items()}
    masks = [_new_masks(shapes, mask_device) for _ in deltas]
    lams = _elect_chunked(shapes, fill, unified, masks, rescaler, chunk_bytes)
    return unified, [Trigger(mask=m, shapes=dict(shapes), rescaler=lam) for m, lam in zip(masks, lams, strict=True)]


def _check_session(
    unified: Mapping[str, Tensor] | None, triggers: list[Trigger], new_delta: Mapping[str, Any]
) -> None:
    if unified is None:
        if triggers:
            raise ValueError("unify: triggers were given without a unified delta")
        return
    if not triggers:
        raise ValueError("unify: a unified delta needs the triggers of its tasks (got none)")
    _check_layout(unified, new_delta, "unify(unified, new_delta)")
    for i, trig in enumerate(triggers):
        _check_layout(unified, trig.shapes, f"unify(unified, triggers[{i}])")


def unify_into(
    unified: dict[str, Tensor] | None,
    triggers: list[Trigger],
    theta: Mapping[str, Tensor],
    theta0: Mapping[str, Tensor],
    *,
    rescaler: str = "mean_abs",
    mask_device: torch.device | str = "cpu",
    chunk_bytes: int | None = None,
) -> tuple[Delta, list[Trigger]]:
    """ConDU §3's session (unifying) with δᵗ = θ − θ⁰ (over θ⁰'s keys), in place and in bounded memory.

    Same results, bit for bit, as ``unify_reference(unified, triggers, task_delta(theta, theta0))``, but δᵗ is
    never materialised (taken chunk by chunk from θ and θ⁰), U and the old triggers' masks are
    overwritten chunk by chunk and their rescalers updated, so the extra memory of a session is the
    chunk temporaries (``chunk_bytes``) plus the new task's mask (1 bit per entry) — and, at the first
    session only, U itself. Returns ``(U, triggers + [new trigger])``; U is ``unified`` (the same
    tensors) when given, else a new dict on θ's devices. A failure part-way leaves U and the triggers
    changed: reload them from a checkpoint.
    """
    _check_rescaler(rescaler)
    ref = {k: v for k, v in theta0.items() if v.is_floating_point()}
    other = {k: v for k, v in theta.items() if k in ref or v.is_floating_point()}  # as task_delta
    _check_layout(ref, other, "unify_into(theta, theta0)")
    _check_float(other, "unify_into(theta)")
    _check_session(unified, triggers, ref)
    shapes = {k: v.shape for k, v in ref.items()}

    def new_chunk(key: str, start: int, stop: int) -> Tensor:  # as task_delta: θ − θ⁰.to(θ)
        t = _flat(theta[key].detach())
        return t[start:stop] - _flat(ref[key].detach())[start:stop].to(t)

    if unified is None:
        unified = {k: torch.empty_like(theta[k].detach(), memory_format=torch.contiguous_format) for k in ref}
    new_trigger = Trigger(mask=_new_masks(shapes, mask_device), shapes=dict(shapes), rescaler=1.0)
    masks = [trig.mask for trig in triggers] + [new_trigger.mask]
    lams = _elect_chunked(shapes, _session_fill(unified, triggers, new_chunk), unified, masks, rescaler, chunk_bytes)
    out = [*triggers, new_trigger]
    for trig, lam in zip(out, lams, strict=True):
        trig.rescaler = lam
    logger.debug("ConDU unify_into: %d tasks, rescalers %s", len(lams), lams)
    return unified, out


# --------------------------------------------------------------------------- decouple


def decouple_into(
    params: Mapping[str, Tensor],
    theta0: Mapping[str, Tensor],
    unified: Mapping[str, Tensor],
    trigger: Trigger,
    *,
    chunk_bytes: int | None = None,
) -> None:
    """Write θ̃ⁱ = θ⁰ + λ_i · Mⁱ ⊙ U (ConDU §3, decoupling) into existing tensors of `params` in place
    (keys of U only).

    Builds a task model without a second model in memory: chunk by chunk (element-wise, so any
    ``chunk_bytes`` gives the same bits), temporaries ≤ ``chunk_bytes``; every key is checked first.
    """
    _check_layout(unified, trigger.shapes, "decouple_into(unified, trigger)")
    _check_layout(params, unified, "decouple_into(params, unified)", subset=True)
    _check_layout(theta0, unified, "decouple_into(theta0, unified)", subset=True)
    size = _chunk_elements({k: u.numel() for k, u in unified.items()}, 1, chunk_bytes)
    with torch.no_grad():
        for key in unified:
            p, p0 = _flat(params[key]), _flat(theta0[key])
            for start, stop in _chunks(p.numel(), size):
                tilde = p.new_empty((1, stop - start), dtype=unified[key].dtype)
                _decoupled_rows(_flat(unified[key])[start:stop].to(p.device), [trigger], key, start, stop, tilde)
                p[start:stop] = p0[start:stop]
                p[start:stop] += tilde[0].to(p.dtype)


# --------------------------------------------------------------------------- storage


def _tensor_bytes(tensors: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def storage_report(
    theta0: Mapping[str, Tensor],
    unified: Mapping[str, Tensor],
    triggers: list[Trigger],
    prototypes_bytes: list[int],
) -> dict[str, Any]:
    """Bytes stored by ConDU (docs/methods/condu.md#storage): shared θ⁰ and U; per task mask bits, λ and prototypes."""
    if len(prototypes_bytes) != len(triggers):
        raise ValueError(
            f"storage_report: {len(triggers)} triggers but {len(prototypes_bytes)} prototype sizes"
        )
    theta0_bytes, unified_bytes = _tensor_bytes(theta0), _tensor_bytes(unified)
    per_task = []
    for trig, proto in zip(triggers, prototypes_bytes, strict=True):
        mask_bytes = trig.nbytes() - RESCALER_BYTES
        per_task.append({"mask": mask_bytes, "rescaler": RESCALER_BYTES, "prototypes": int(proto),
                         "total": mask_bytes + RESCALER_BYTES + int(proto)})
    tasks_bytes = sum(t["total"] for t in per_task)
    return {
        "theta0": theta0_bytes,
        "unified": unified_bytes,
        "shared": theta0_bytes + unified_bytes,
        "per_task": per_task,
        "tasks": tasks_bytes,
        "total": theta0_bytes + unified_bytes + tasks_bytes,
    }


# --------------------------------------------------------------------------- test oracles
#
# The plugin runs unify_into and decouple_into. These two compute the same results out of place,
# whole tensors at once for decouple: the tests hold the production path against them bit for bit.


def unify_reference(
    unified: Mapping[str, Tensor] | None,
    triggers: list[Trigger],
    new_delta: Mapping[str, Tensor],
    *,
    rescaler: str = "mean_abs",
    mask_device: torch.device | str = "cpu",
    chunk_bytes: int | None = None,
) -> tuple[Delta, list[Trigger]]:
    """Test oracle of :func:`unify_into`: one ConDU session (ConDU §3, unifying) out of place, from an
    explicit δᵗ: elect over {δ̃¹…δ̃ᵗ⁻¹ (decoupled from U), δᵗ (new)}.

    The old decoupled deltas δ̃ⁱ = λ_i·Mⁱ⊙U are rebuilt chunk by chunk (see "chunks" above; any
    ``chunk_bytes`` gives bit-identical results). Returns a new unified delta, on the devices of
    `new_delta`, and ALL t triggers recomputed (old ones against their decoupled deltas, as the code
    does: the original deltas are not kept); the inputs are not changed, so this holds a second U and
    new masks while it runs — :func:`unify_into`, the in-place session in bounded extra memory, is
    the one the plugin runs.
    λ_i = Σ_tensors mean|δⁱ| / Σ_tensors mean|Mⁱ⊙U| ("mean_abs", the code) or ‖δⁱ‖₁ / ‖Mⁱ⊙U‖₁ ("l1");
    λ_i = 1 where the denominator is 0.
    """
    _check_rescaler(rescaler)
    _check_float(new_delta, "unify(new_delta)")
    _check_session(unified, triggers, new_delta)
    new = {k: v.detach().contiguous() for k, v in new_delta.items()}
    shapes = {k: v.shape for k, v in new.items()}
    old = unified if unified is not None else {}  # _check_session: no unified delta means no old triggers
    fill = _session_fill(old, triggers, lambda key, start, stop: _flat(new[key])[start:stop])
    out = {k: torch.empty_like(v) for k, v in new.items()}
    masks = [_new_masks(shapes, mask_device) for _ in range(len(triggers) + 1)]
    lams = _elect_chunked(shapes, fill, out, masks, rescaler, chunk_bytes)
    logger.debug("ConDU unify: %d tasks, rescalers %s", len(lams), lams)
    return out, [Trigger(mask=m, shapes=dict(shapes), rescaler=lam) for m, lam in zip(masks, lams, strict=True)]


def _decouple_tensor(u: Tensor, trigger: Trigger, key: str) -> Tensor:
    """δ̃ⁱ = λ_i · Mⁱ ⊙ U for one tensor, on the device of U."""
    mask = unpack_mask(trigger.mask[key].to(u.device), trigger.shapes[key])
    return u * mask * trigger.rescaler


def decouple_reference(unified: Mapping[str, Tensor], trigger: Trigger) -> Delta:
    """Test oracle of :func:`decouple_into`: the decoupled delta of one task (ConDU §3, decoupling),
    δ̃ⁱ = λ_i · Mⁱ ⊙ U, key by key, whole tensors at once (θ̃ⁱ = θ⁰ + δ̃ⁱ gives the same bits)."""
    _check_layout(unified, trigger.shapes, "decouple_reference(unified, trigger)")
    return {key: _decouple_tensor(u, trigger, key) for key, u in unified.items()}


# --------------------------------------------------------------------------- merging baselines' primitives
#
# Task Arithmetic, TIES and MagMax (strategies/merging, docs/methods/merging.md) reuse the chunking above:
# ``chunk_ranges`` walks every tensor in the same bounded element ranges, ``delta_chunk`` reads δ = θ − θ⁰
# there without materialising δ, ``kth_magnitude`` finds a whole-model magnitude threshold in two passes,
# and ``max_magnitude_into`` folds one more task vector into a running max-|δ| merge.

RADIX_BINS = 1 << 16  # bins of each radix pass of kth_magnitude: 16 bits of the float32 pattern per pass


def chunk_ranges(sizes: Mapping[str, int], n_tasks: int = 1, chunk_bytes: int | None = None,
                 ) -> Iterator[tuple[str, int, int]]:
    """``(key, start, stop)`` flat element ranges covering every tensor of ``sizes`` (key → numel), in
    the bounded chunks of this module (``chunk_bytes / (24 · n_tasks)`` elements, whole SUM_BLOCKs, so
    ``start`` is a multiple of 8: whole mask bytes)."""
    size = _chunk_elements(sizes, n_tasks, chunk_bytes)
    for key, n in sizes.items():
        for start, stop in _chunks(n, size):
            yield key, start, stop


def delta_chunk(theta: Mapping[str, Tensor], theta0: Mapping[str, Tensor], key: str, start: int, stop: int) -> Tensor:
    """δ[start:stop] of one tensor, flat: θ − θ⁰.to(θ), the same floats as :func:`task_delta` (detached)."""
    t = _flat(theta[key].detach())
    return t[start:stop] - _flat(theta0[key].detach())[start:stop].to(t)


def _float_sizes(theta: Mapping[str, Tensor], theta0: Mapping[str, Tensor], what: str) -> dict[str, int]:
    """numel per float key of θ⁰, after checking θ has them with equal shapes (as :func:`task_delta`)."""
    ref = {k: v for k, v in theta0.items() if v.is_floating_point()}
    other = {k: v for k, v in theta.items() if k in ref or v.is_floating_point()}
    _check_layout(ref, other, f"{what}(theta, theta0)")
    _check_float(other, f"{what}(theta)")
    return {k: v.numel() for k, v in ref.items()}


def _magnitude_bits(chunk: Tensor) -> Tensor:
    """|x| in float32 as its int32 bit pattern: for non-negative floats the patterns order as the values."""
    return chunk.abs().to(torch.float32).contiguous().view(torch.int32)


def _select_bin(counts: Tensor, rank: int) -> tuple[int, int]:
    """The bin holding the ``rank``-th smallest entry (1-based) and that entry's rank inside the bin."""
    cumulative = counts.cumsum(0)
    index = int(torch.searchsorted(cumulative, torch.tensor([rank], dtype=cumulative.dtype)).item())
    before = int(cumulative[index - 1].item()) if index > 0 else 0
    return index, rank - before


def kth_magnitude(theta: Mapping[str, Tensor], theta0: Mapping[str, Tensor], k: int, *,
                  chunk_bytes: int | None = None) -> Tensor:
    """The ``k``-th smallest |δ| (1-based) over EVERY entry of δ = θ − θ⁰ (the whole model, float32), as
    ``torch.kthvalue`` of the concatenated |δ| — the threshold of TIES's trimming (docs/methods/merging.md).

    Bounded memory: a radix selection on the float32 bit patterns (non-negative floats order as their
    bits), two passes over :func:`chunk_ranges` chunks — a histogram of the high 16 bits finds the bin
    of the k-th entry, a histogram of the low 16 bits inside that bin finds the entry. Exact for any
    chunk size. Returns a 0-d float32 tensor on the CPU.
    """
    sizes = _float_sizes(theta, theta0, "kth_magnitude")
    total = sum(sizes.values())
    if not 1 <= k <= total:
        raise ValueError(f"kth_magnitude: k must be in [1, {total}] (entries of the delta), got {k}")
    high = torch.zeros(RADIX_BINS, dtype=torch.int64)
    for key, start, stop in chunk_ranges(sizes, 1, chunk_bytes):
        bits = _magnitude_bits(delta_chunk(theta, theta0, key, start, stop))
        high += torch.bincount(bits >> 16, minlength=RADIX_BINS).cpu()
    top, rank = _select_bin(high, k)
    low = torch.zeros(RADIX_BINS, dtype=torch.int64)
    for key, start, stop in chunk_ranges(sizes, 1, chunk_bytes):
        bits = _magnitude_bits(delta_chunk(theta, theta0, key, start, stop))
        low += torch.bincount(bits[(bits >> 16) == top] & 0xFFFF, minlength=RADIX_BINS).cpu()
    bottom, _ = _select_bin(low, rank)
    return torch.tensor([(top << 16) | bottom], dtype=torch.int32).view(torch.float32)[0]


def kth_magnitude_reference(delta: Mapping[str, Tensor], k: int) -> Tensor:
    """Test oracle of :func:`kth_magnitude`: ``torch.kthvalue`` of all |δ| concatenated (float32, CPU)."""
    flat = torch.cat([d.detach().abs().to(torch.float32).reshape(-1).cpu() for d in delta.values()])
    return flat.kthvalue(k).values


def max_magnitude_into(out: Mapping[str, Tensor], theta: Mapping[str, Tensor], theta0: Mapping[str, Tensor], *,
                       chunk_bytes: int | None = None) -> None:
    """Fold one task vector δ = θ − θ⁰ into a running max-magnitude merge, in place and chunk by chunk:
    ``out ← where(|δ| ≥ |out|, δ, out)`` (MagMax §3.2; the authors' ``merge_max_abs`` folds the task
    vectors left to right with ``>=``, so on equal magnitudes the LATER task wins). Start ``out`` at zeros:
    the first fold copies δ¹. Element-wise: any ``chunk_bytes`` gives the same bits."""
    sizes = _float_sizes(theta, theta0, "max_magnitude_into")
    _check_layout({k: theta0[k] for k in sizes}, out, "max_magnitude_into(theta0, out)")
    with torch.no_grad():
        for key, start, stop in chunk_ranges(sizes, 1, chunk_bytes):
            d = delta_chunk(theta, theta0, key, start, stop)
            o = _flat(out[key])[start:stop]
            o.copy_(torch.where(d.abs() >= o.abs(), d.to(o.dtype), o))
