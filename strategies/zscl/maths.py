"""ZSCL's terms as pure tensor maths (imports only torch; docs/methods/zscl.md).

Notation (ZSCL §3, ``mtil/src/models/finetune.py``): ``f_s``, ``f_t`` the L2-normalised image features of
a batch of reference images under the student and the teacher, ``g`` the teacher's normalised features
of the reference texts, ``s`` the (frozen) CLIP logit scale. Logits ``z = s · f g^T`` (B, N).

- :func:`distillation`: ``T² · CE(z_s / T, softmax(z_t / T))``, the mean over rows (``helpers.py::distillation``).
- image side: the rows are images (softmax over the reference texts); text side: the same logits
  transposed (softmax over the reference images for each text) — :func:`image_text_distillation`.
- :func:`l2_sum`: weight consolidation ``Σ (θ − θ_start)²`` (a *sum*, ``F.mse_loss(..., reduction="sum")``).
- :func:`we_update`: weight ensemble, the running uniform mean ``avg ← (n·avg + θ) / (n + 1)``.
- :func:`wise_merge`: WiSE-FT ``θ ← α θ + (1 − α) θ_start``.
- :func:`virtual_vocab`: LwF-VR's random token sequences ``[SOT, w_1..w_L, EOT, 0...]``.
- :func:`herding`: iCaRL's exemplar order (greedy mean matching of normalised features).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def distillation(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """``T² · mean_i CE(z_s[i] / T, softmax(z_t[i] / T))`` over the rows ``i`` (softmax over columns)."""
    targets = F.softmax(teacher_logits / temperature, dim=1)  # (B, N)
    return F.cross_entropy(student_logits / temperature, targets, reduction="mean") * temperature**2


def reference_logits(image_features: Tensor, text_features: Tensor, scale: Tensor | float) -> Tensor:
    """``s · f g^T`` in float32, (B, N): image features (B, D) against reference text features (N, D)."""
    return scale * image_features.float() @ text_features.float().t()


def image_text_distillation(student_features: Tensor, teacher_features: Tensor, text_features: Tensor,
                            scale: Tensor | float, temperature: float) -> tuple[Tensor, Tensor]:
    """(image-side, text-side) distillation of one reference batch (module docstring).

    Both logits use the teacher's text features ``g`` (the official code does: only the image tower
    of the student is distilled); the text side is the transposed logits, (N, B).
    """
    student = reference_logits(student_features, text_features, scale)  # (B, N)
    teacher = reference_logits(teacher_features, text_features, scale)  # (B, N)
    return (distillation(teacher, student, temperature),
            distillation(teacher.t(), student.t(), temperature))


def l2_sum(params: Mapping[str, Tensor], anchors: Mapping[str, Tensor]) -> Tensor:
    """``Σ_name Σ (θ − θ_anchor)²`` over the named tensors (the anchors are detached)."""
    terms = [F.mse_loss(p.float(), anchors[name].detach().float(), reduction="sum") for name, p in params.items()]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


@torch.no_grad()
def we_update(average: Mapping[str, Tensor], params: Mapping[str, Tensor], count: int) -> None:
    """In place: ``avg ← (count · avg + θ) / (count + 1)`` (``helpers.py::merge_we``; ``count`` ≥ 1 is
    the number of samples after this one minus one, as the official ``we_n``)."""
    for name, avg in average.items():
        avg.mul_(count).add_(params[name].detach().to(avg.dtype)).div_(count + 1.0)


@torch.no_grad()
def wise_merge(params: Mapping[str, Tensor], anchors: Mapping[str, Tensor], alpha: float) -> None:
    """In place: ``θ ← α θ + (1 − α) θ_anchor`` (``finetune.py`` after training, ``--wise_ft_alpha``)."""
    for name, p in params.items():
        p.copy_(alpha * p + (1.0 - alpha) * anchors[name].to(p.dtype))


def virtual_vocab(count: int, length: int, vocab_size: int, sot: int, eot: int, context_length: int,
                  generator: torch.Generator) -> Tensor:
    """``count`` random token rows ``[SOT, w_1..w_length, EOT, 0, ...]`` of ``context_length`` tokens,
    ``w ~ U{0..vocab_size−1}`` from ``generator`` (``helpers.py::virtual_vocab``: 1000 × 10). (count, L)"""
    if length + 2 > context_length:
        raise ValueError(f"virtual vocabulary: {length} tokens + SOT + EOT exceed the context length {context_length}")
    words = torch.randint(0, vocab_size, (count, length), generator=generator)
    start = torch.full((count, 1), sot, dtype=torch.long)
    end = torch.full((count, 1), eot, dtype=torch.long)
    pad = torch.zeros((count, context_length - length - 2), dtype=torch.long)
    return torch.cat([start, words, end, pad], dim=1)


def herding(features: Tensor, count: int) -> list[int]:
    """iCaRL's exemplar order: indices of ``count`` rows of ``features`` (N, D, normalised) picked greedily
    so that the mean of the picked rows stays closest to the mean of all rows
    (``dynamic_dataset.py::constructExampleSet``)."""
    features = features.double()
    target = features.mean(dim=0)  # (D,)
    available = torch.ones(len(features), dtype=torch.bool)
    picked: list[int] = []
    running = torch.zeros_like(target)
    for k in range(min(count, len(features))):
        distance = ((target - (running + features) / (k + 1)) ** 2).sum(dim=1)  # (N,)
        distance[~available] = float("inf")
        index = int(distance.argmin())
        picked.append(index)
        available[index] = False
        running += features[index]
    return picked


def named_clone(params: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """Detached copies of named tensors (a snapshot of weights)."""
    return {name: p.detach().clone() for name, p in params}
