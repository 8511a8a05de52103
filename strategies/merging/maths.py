"""The merging rules as pure torch maths (docs/methods/merging.md): Task Arithmetic's sum, TIES's trim /
elect / disjoint mean, MagMax's max-|δ| (:func:`strategies.condu.fusion.max_magnitude_into`), and the
scaled merge θ = θ⁰ + λ·τ.

Everything walks the model in ConDU's bounded chunks (:func:`strategies.condu.fusion.chunk_ranges`), so
the temporaries stay bounded whatever the tensor sizes, and δ = θ − θ⁰ is read chunk by chunk
(:func:`~strategies.condu.fusion.delta_chunk`), never materialised. Element-wise steps give the same bits
for any chunk size; TIES's two whole-model quantities (the trimming threshold, the majority sign) are
computed in a pass of their own first, so they do too. A model is a ``dict[str, Tensor]``.

TIES follows the authors' code (prateeky2806/ties-merging@44e7891, ``src/utils/merge_utils.py``):
- trim: each task vector keeps the entries with |δ| ≥ the (d − ⌊d·k/100⌋)-th smallest |δ| over the
  WHOLE model (d entries; ``topk_values_mask``), so ⌊d·k/100⌋ + 1 entries without ties;
- elect: s = sign(Σ_t δ̂_t) per entry; a zero sum takes the majority sign sign(Σ_entries s) of the whole
  model (``resolve_zero_signs(..., "majority")``);
- disjoint mean: τ = Σ_t δ̂_t·[δ̂_t agrees with s] / max(1, #agreeing) (``disjoint_merge``, "dis-mean");
  an entry whose s is 0 (a whole model of zero sums) keeps the negative entries, as the code's
  ``where(s > 0, δ > 0, δ < 0)``.
Sums over tasks run left to right (task 1 first), so the chunked merge and its unchunked oracle agree
bit for bit; the majority count is exact (int64).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..condu.fusion import chunk_ranges, delta_chunk, kth_magnitude, pack_mask, unpack_mask

Delta = dict[str, Tensor]


# --------------------------------------------------------------------------- shared


def task_sum(stack: Tensor) -> Tensor:
    """Σ_t over the first dimension of (T, ...), left to right (task 1 first): the same bits for any chunking."""
    total = stack[0].clone()
    for row in stack[1:]:
        total += row
    return total


def scaled_merge_into(params: Mapping[str, Tensor], theta0: Mapping[str, Tensor], tau: Mapping[str, Tensor],
                      scaling: float, *, chunk_bytes: int | None = None) -> None:
    """θ = θ⁰ + λ·τ into ``params`` in place (keys of τ), as the authors' ``apply_to``: λ·τ rounded to
    float32 first, then added (one multiply, one add per entry: the same bits for any chunk size)."""
    lam = torch.tensor(scaling, dtype=torch.float32)
    with torch.no_grad():
        for key, start, stop in chunk_ranges({k: t.numel() for k, t in tau.items()}, 1, chunk_bytes):
            p = params[key].view(-1)[start:stop]
            t = tau[key].view(-1)[start:stop]
            p.copy_(theta0[key].view(-1)[start:stop] + (t * lam.to(t.device)).to(p.dtype))


def add_delta_into(out: Mapping[str, Tensor], theta: Mapping[str, Tensor], theta0: Mapping[str, Tensor], *,
                   chunk_bytes: int | None = None) -> None:
    """Task Arithmetic's running sum: ``out += θ − θ⁰`` chunk by chunk (Σ_t δ_t, task 1 first)."""
    with torch.no_grad():
        for key, start, stop in chunk_ranges({k: t.numel() for k, t in out.items()}, 1, chunk_bytes):
            out[key].view(-1)[start:stop] += delta_chunk(theta, theta0, key, start, stop)


# --------------------------------------------------------------------------- TIES: trim


def trim_rank(total: int, k: float) -> int:
    """The rank (1-based, ascending |δ|) of TIES's threshold: d − ⌊d·k/100⌋ as the authors'
    ``topk_values_mask`` (k in (0, 100]; k = 100 keeps everything: rank 1)."""
    if not 0 < k <= 100:
        raise ValueError(f"TIES: k must be in (0, 100] (percent kept), got {k}")
    return max(total - int(total * (k / 100)), 1)


@dataclass
class TrimmedDelta:
    """One task vector after TIES's trim, stored sparse: per tensor the kept-entry mask (bit-packed, as
    :func:`~strategies.condu.fusion.pack_mask`) and the kept values in flat order."""

    mask: dict[str, Tensor]  # key -> uint8, ceil(numel / 8) bytes
    values: dict[str, Tensor]  # key -> 1-d float32, the kept entries in flat (row-major) order
    shapes: dict[str, torch.Size]
    threshold: float  # the |δ| threshold that was applied

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for part in (self.mask, self.values) for t in part.values())

    def dense(self) -> Delta:
        """The trimmed task vector δ̂ as dense tensors (tests, small models)."""
        out = {}
        for key, shape in self.shapes.items():
            m = unpack_mask(self.mask[key], shape)
            out[key] = torch.zeros(shape, dtype=self.values[key].dtype, device=self.values[key].device)
            out[key][m.to(out[key].device)] = self.values[key]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"mask": {k: t.cpu() for k, t in self.mask.items()},
                "values": {k: t.cpu() for k, t in self.values.items()},
                "shapes": {k: list(s) for k, s in self.shapes.items()}, "threshold": self.threshold}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> TrimmedDelta:
        return cls(mask=dict(state["mask"]), values=dict(state["values"]),
                   shapes={k: torch.Size(s) for k, s in state["shapes"].items()}, threshold=float(state["threshold"]))

    def to(self, device: torch.device | str) -> TrimmedDelta:
        return TrimmedDelta({k: t.to(device) for k, t in self.mask.items()},
                            {k: t.to(device) for k, t in self.values.items()}, self.shapes, self.threshold)


def trim(theta: Mapping[str, Tensor], theta0: Mapping[str, Tensor], k: float, *,
         chunk_bytes: int | None = None) -> TrimmedDelta:
    """TIES's trim of δ = θ − θ⁰ (over θ⁰'s float keys): keep |δ| ≥ the threshold of :func:`trim_rank`
    over the whole model (found first by :func:`~strategies.condu.fusion.kth_magnitude`), chunk by chunk.

    Exact zeros are not stored even where the threshold is 0 (more than 100 − k % of δ unchanged, which the
    authors' ``>=`` keeps): a zero adds nothing to the election's sum, the disjoint sum or its count, so
    the merge is the same and the storage stays ≤ the kept fraction."""
    keys = {key: v for key, v in theta0.items() if v.is_floating_point()}
    sizes = {key: v.numel() for key, v in keys.items()}
    threshold = kth_magnitude(theta, theta0, trim_rank(sum(sizes.values()), k), chunk_bytes=chunk_bytes)
    masks = {key: torch.zeros((n + 7) // 8, dtype=torch.uint8, device=theta[key].device) for key, n in sizes.items()}
    parts: dict[str, list[Tensor]] = {key: [] for key in keys}
    with torch.no_grad():
        for key, start, stop in chunk_ranges(sizes, 1, chunk_bytes):
            d = delta_chunk(theta, theta0, key, start, stop).to(torch.float32)
            keep = (d.abs() >= threshold.to(d.device)) & (d != 0)  # a kept 0 changes no sum, sign or count
            masks[key][start // 8:(stop + 7) // 8] = pack_mask(keep)
            parts[key].append(d[keep])
    values = {key: torch.cat(p) if p else torch.zeros(0) for key, p in parts.items()}
    return TrimmedDelta(masks, values, {key: v.shape for key, v in keys.items()}, float(threshold))


class _Rows:
    """Dense chunks of the stored trimmed deltas, read in order (each task's value offset runs along)."""

    def __init__(self, trims: list[TrimmedDelta]) -> None:
        self.trims = trims
        self.offsets = [0] * len(trims)
        self.key: str | None = None

    def read(self, key: str, start: int, stop: int, device: torch.device) -> Tensor:
        """δ̂_t[start:stop] of every task t: (T, stop − start) float32; chunks of a key in increasing order."""
        if key != self.key or start == 0:
            self.key, self.offsets = key, [0] * len(self.trims)
        rows = torch.zeros((len(self.trims), stop - start), dtype=torch.float32, device=device)
        for i, t in enumerate(self.trims):
            keep = unpack_mask(t.mask[key][start // 8:(stop + 7) // 8].to(device), (stop - start,))
            count = int(keep.sum())
            rows[i][keep] = t.values[key][self.offsets[i]:self.offsets[i] + count].to(device)
            self.offsets[i] += count
        return rows


# --------------------------------------------------------------------------- TIES: elect, disjoint mean


def elect_signs(stack: Tensor) -> Tensor:
    """TIES's elected sign per entry before zero resolution: sign(Σ_t δ̂_t) of (T, ...) ("mass")."""
    return torch.sign(task_sum(stack))


def sign_counts(signs: Tensor) -> Tensor:
    """(#positive, #negative) entries of a sign tensor, int64 (summed over chunks for the majority)."""
    return torch.stack([(signs > 0).sum(), (signs < 0).sum()]).to(torch.int64).cpu()


def majority_sign(counts: Tensor) -> float:
    """sign(Σ_entries s) of the whole model from :func:`sign_counts` summed over every chunk."""
    return float(torch.sign(counts[0] - counts[1]))


def resolve_zero_signs(signs: Tensor, majority: float) -> Tensor:
    """Zero elected signs take the whole model's majority sign (``resolve_zero_signs(..., "majority")``)."""
    return torch.where(signs == 0, torch.tensor(majority, dtype=signs.dtype, device=signs.device), signs)


def disjoint_mean(stack: Tensor, signs: Tensor) -> Tensor:
    """τ = Σ_t δ̂_t·a_t / max(1, Σ_t a_t), a_t = [δ̂_t > 0] where s > 0 else [δ̂_t < 0] (TIES's disjoint mean)."""
    agree = torch.where(signs > 0, stack > 0, stack < 0)
    count = agree.sum(0).to(stack.dtype).clamp(min=1)
    return task_sum(stack * agree) / count


def ties_merge_into(params: Mapping[str, Tensor], theta0: Mapping[str, Tensor], trims: list[TrimmedDelta],
                    scaling: float, *, chunk_bytes: int | None = None) -> None:
    """θ = θ⁰ + λ·τ_TIES of the stored trimmed deltas into ``params`` in place, in bounded memory: a first
    pass counts the elected signs of the whole model (the majority for zero sums), a second elects,
    averages disjointly and writes θ chunk by chunk (any ``chunk_bytes`` gives the same bits)."""
    if not trims:
        raise ValueError("ties_merge_into needs at least one trimmed task vector")
    sizes = {key: s.numel() for key, s in trims[0].shapes.items()}
    lam = torch.tensor(scaling, dtype=torch.float32)
    counts = torch.zeros(2, dtype=torch.int64)
    rows = _Rows(trims)
    for key, start, stop in chunk_ranges(sizes, len(trims), chunk_bytes):
        counts += sign_counts(elect_signs(rows.read(key, start, stop, params[key].device)))
    majority = majority_sign(counts)
    rows = _Rows(trims)
    with torch.no_grad():
        for key, start, stop in chunk_ranges(sizes, len(trims), chunk_bytes):
            stack = rows.read(key, start, stop, params[key].device)
            tau = disjoint_mean(stack, resolve_zero_signs(elect_signs(stack), majority))
            p = params[key].view(-1)[start:stop]
            p.copy_(theta0[key].view(-1)[start:stop] + (tau * lam.to(tau.device)).to(p.dtype))


# --------------------------------------------------------------------------- test oracles


def ties_reference(deltas: list[Mapping[str, Tensor]], k: float) -> Delta:
    """Test oracle of TIES's τ: whole-model flat vectors at once, as the authors' ``merge_methods("topk",
    ..., resolve_method="mass", merge_func="dis-mean")`` (``torch.kthvalue`` threshold per task vector),
    with the sums over tasks left to right (:func:`task_sum`)."""
    keys = list(deltas[0])
    flat = torch.stack([torch.cat([d[key].detach().reshape(-1).to(torch.float32) for key in keys]) for d in deltas])
    kth = flat.abs().kthvalue(trim_rank(flat.shape[1], k), dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= kth)
    signs = elect_signs(trimmed)
    tau = disjoint_mean(trimmed, resolve_zero_signs(signs, majority_sign(sign_counts(signs))))
    out, start = {}, 0
    for key in keys:
        n = deltas[0][key].numel()
        out[key] = tau[start:start + n].reshape(deltas[0][key].shape)
        start += n
    return out


def magmax_reference(deltas: list[Mapping[str, Tensor]]) -> Delta:
    """Test oracle of the running max-|δ|: the authors' ``merge_max_abs`` left fold with ``>=``."""
    out = {key: v.clone() for key, v in deltas[0].items()}
    for d in deltas[1:]:
        out = {key: torch.where(d[key].abs() >= out[key].abs(), d[key], out[key]) for key in out}
    return out
