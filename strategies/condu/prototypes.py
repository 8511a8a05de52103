"""ConDU semantic prototypes, task scores and aggregated prediction. Pure torch maths.

ConDU §3 (semantic prototypes, aggregated inference; docs/methods/condu.md#inference). The features
and per-task logits come from the pretrained / decoupled models (:mod:`.features`, :mod:`.store`);
:func:`.inference.aggregated_logits` calls these functions.

Weighting (the paper's text says "weighted", the official code averages uniformly; default uniform).
Choice: the pretrained model, which has no prototypes, is given the score of an average selected
task, i.e. the mean of the selected tasks' scores; "similarity" then weights ∝ max(score, 0) and
"softmax" weights = softmax(score / τ) over {pretrained} ∪ selected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

AGGREGATIONS = ("uniform", "similarity", "softmax")

# task index, rows of the batch that selected it (1-d long) -> logits of those rows (len(rows), C)
TaskLogitsFn = Callable[[int, Tensor], Tensor]


def _class_rows(labels: Tensor, classes: list[int]) -> Tensor:
    """Row of `classes` holding each label, (N,); ValueError for labels outside `classes`."""
    cls = torch.as_tensor(classes, dtype=torch.long, device=labels.device)  # (C,)
    if cls.unique().numel() != cls.numel():
        raise ValueError(f"class_prototypes: duplicate class ids in {classes}")
    order = cls.argsort()
    sorted_cls = cls[order]
    pos = torch.searchsorted(sorted_cls, labels.long()).clamp(max=max(len(classes) - 1, 0))  # (N,)
    known = sorted_cls[pos] == labels if len(classes) else torch.zeros_like(labels, dtype=torch.bool)
    if not bool(known.all()):
        raise ValueError(f"class_prototypes: labels not in classes: {labels[~known].unique().tolist()[:10]}")
    return order[pos]


def class_prototypes(
    image_features: Tensor, labels: Tensor, text_features: Tensor, classes: list[int],
    normalize_text: bool = False,
) -> Tensor:
    """Prototypes of one task (ConDU §3, semantic prototypes), float32 (C, D), row c for class ``classes[c]``:

    P_k = normalize((mean_{n: y_n = k} normalize(f_img(x_n)) + t_k) / 2),
    t_k the mean over templates of the normalised template features of class k, taken as given —
    NOT re-normalised, as in the official code (src/models/finetune.py), so |t_k| < 1 when the
    templates disagree and the image half weighs more. ``normalize_text=True`` uses normalize(t_k)
    instead (CLIP's zero-shot classifier vector; this project's behaviour before the fidelity fix).
    A class without images gets normalize(t_k) alone, in both cases.
    """
    if image_features.dim() != 2 or labels.shape != image_features.shape[:1]:
        raise ValueError(f"class_prototypes: need image_features (N, D) and labels (N,), got "
                         f"{tuple(image_features.shape)} and {tuple(labels.shape)}")
    if text_features.shape != (len(classes), image_features.shape[1]):
        want = (len(classes), image_features.shape[1])
        raise ValueError(f"class_prototypes: text_features must be {want}, got {tuple(text_features.shape)}")
    rows = _class_rows(labels, classes)  # (N,)
    img = F.normalize(image_features.float(), dim=-1)  # (N, D)
    txt = text_features.float().to(img.device)  # (C, D)
    if normalize_text:
        txt = F.normalize(txt, dim=-1)
    sums = torch.zeros_like(txt).index_add_(0, rows.to(img.device), img)  # (C, D)
    counts = torch.bincount(rows.to(img.device), minlength=len(classes)).unsqueeze(1)  # (C, 1)
    mixed = (sums / counts.clamp(min=1) + txt) / 2  # (C, D)
    return F.normalize(torch.where(counts > 0, mixed, txt), dim=-1)


def task_scores(image_features: Tensor, prototypes: list[Tensor]) -> Tensor:
    """Score of task s for each image (ConDU §3, aggregated inference): max_k cos(f, P^s_k); (B, S)."""
    img = F.normalize(image_features.float(), dim=-1)  # (B, D)
    cols = []
    for s, proto in enumerate(prototypes):
        if proto.dim() != 2 or proto.shape[0] == 0 or proto.shape[1] != img.shape[1]:
            raise ValueError(
                f"task_scores: prototypes[{s}] must be (C_s > 0, {img.shape[1]}), got {tuple(proto.shape)}"
            )
        cos = img @ F.normalize(proto.float().to(img.device), dim=-1).T  # (B, C_s)
        cols.append(cos.amax(1))
    return torch.stack(cols, 1) if cols else img.new_zeros((img.shape[0], 0))  # (B, S)


def select_tasks(scores: Tensor, k: int) -> Tensor:
    """Top-K tasks per sample (ConDU §3, aggregated inference): indices (B, min(k, S)), best first."""
    if k < 0:
        raise ValueError(f"select_tasks: k must be >= 0, got {k}")
    return scores.topk(min(k, scores.shape[1]), dim=1).indices


def aggregation_weights(
    scores: Tensor, selected: Tensor, mode: str = "uniform", temperature: float = 0.1
) -> Tensor:
    """Weights (B, 1 + K) over {pretrained (column 0)} ∪ selected tasks; rows sum to 1.

    uniform: 1/(1+K). The pretrained model's score is the mean of the selected scores ([choice]);
    similarity: ∝ max(score, 0), uniform if all are 0; softmax: softmax(score / τ).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode must be one of {AGGREGATIONS}, got {mode!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, k = selected.shape
    uniform = torch.full((batch, 1 + k), 1.0 / (1 + k), device=scores.device)
    if mode == "uniform" or k == 0:
        return uniform
    chosen = scores.float().gather(1, selected)  # (B, K)
    all_scores = torch.cat([chosen.mean(1, keepdim=True), chosen], 1)  # (B, 1 + K)
    if mode == "softmax":
        return torch.softmax(all_scores / temperature, dim=1)
    w = all_scores.clamp(min=0)
    total = w.sum(1, keepdim=True)  # (B, 1)
    return torch.where(total > 0, w / total.clamp(min=torch.finfo(w.dtype).tiny), uniform)


def aggregate_logits(
    pretrained_logits: Tensor, task_logits: Tensor | TaskLogitsFn, selected: Tensor, weights: Tensor
) -> Tensor:
    """Final logits (ConDU §3, aggregated inference): w_0·z⁰ + Σ_k w_k·z^{selected_k}; (B, C).

    `task_logits` is a tensor (S, B, C), or a callable ``(task, rows) -> (len(rows), C)`` called once
    per selected task in ascending order with the rows that selected it (one model rebuilt per task).
    """
    batch, n_cls = pretrained_logits.shape
    if selected.shape[0] != batch or weights.shape != (batch, 1 + selected.shape[1]):
        raise ValueError(
            f"aggregate_logits: selected {tuple(selected.shape)} and weights {tuple(weights.shape)} "
            f"do not fit a batch of {batch} with 1 + K models"
        )
    if isinstance(task_logits, Tensor):
        if task_logits.dim() != 3 or task_logits.shape[1:] != pretrained_logits.shape:
            raise ValueError(f"aggregate_logits: task_logits must be (S, {batch}, {n_cls}), "
                             f"got {tuple(task_logits.shape)}")
        table = task_logits

        def from_table(task: int, rows: Tensor) -> Tensor:
            return table[task, rows]  # (len(rows), C)

        logits_of: TaskLogitsFn = from_table
    else:
        logits_of = task_logits
    out = weights[:, :1] * pretrained_logits  # (B, C)
    for task in selected.unique().tolist():
        rows, slots = (selected == task).nonzero(as_tuple=True)  # a task fills at most one slot per row
        logits = logits_of(task, rows)  # (len(rows), C)
        if logits.shape != (rows.numel(), n_cls):
            raise ValueError(f"aggregate_logits: task {task} gave logits {tuple(logits.shape)}, "
                             f"expected ({rows.numel()}, {n_cls})")
        out = out.index_add(0, rows, weights[rows, 1 + slots].unsqueeze(1) * logits.to(out))
    return out
