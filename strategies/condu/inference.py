"""ConDU's prediction: which model predicts an evaluated experience, and the aggregated prediction
(ConDU §3, inference; docs/methods/condu.md#inference).

:func:`route` is the one place that decides task-aware vs aggregated evaluation; the plugin's hooks,
its :meth:`~.plugin.ConDUPlugin.predict` and :class:`~.strategy.ConDU`'s forward all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..training import has_several_task_labels
from .prototypes import aggregate_logits, aggregation_weights, select_tasks, task_scores
from .store import PRETRAINED, TRAINING, TaskModelStore

AGGREGATED = None  # route of an experience predicted by aggregation over the trained tasks


def route(inference: str, index: int, task_of_experience: Mapping[int, int], *, experience: Any = None,
          training: int | None = None) -> int | None:
    """Model that predicts evaluation experience ``index``: a task index, TRAINING, or AGGREGATED.

    Task-aware (``inference: task_aware``; ``auto`` on a task-incremental stream — ``experience``'s
    stream carries more than one task label, as Avalanche's ``nc_benchmark(task_labels=True)`` and
    MTIL give) — the decoupled model of the task trained on experience ``index`` (evaluation
    experience j is matched to training experience j), or TRAINING for the experience in training
    (``training``, its index, given only while its weights are kept aside); aggregated otherwise,
    and for experiences not trained yet (zero-shot transfer). Without ``experience`` (a bare
    minibatch), ``auto`` is aggregated.
    """
    aware = inference == "task_aware" or (
        inference == "auto" and experience is not None and has_several_task_labels(experience))
    if not aware:
        return AGGREGATED
    task = task_of_experience.get(index)
    if task is not None:
        return task
    return TRAINING if training is not None and index == training else AGGREGATED


def aggregated_logits(store: TaskModelStore, model: Any, images: Tensor, *, top_k: int, weighting: str,
                      temperature: float) -> Tensor:
    """Aggregated prediction (ConDU §3; docs/methods/condu.md#inference), (B, classes):

    the pretrained image feature f⁰ scores task s by max_k cos(f⁰, P^s_k); the top-K tasks and the
    pretrained model each give logits with their own towers; the logits are mixed by
    :func:`~.prototypes.aggregation_weights` (uniform by default). With no trained task it is the
    pretrained model's prediction. One model load per selected task and minibatch: each model's image
    tower must see the minibatch, and Avalanche hands them over one at a time.
    """
    store.load(PRETRAINED)
    with torch.no_grad():
        image0 = model.encode_image(images)  # (B, D)
        pretrained = model.logits_from_features(image0, store.text_features(model, PRETRAINED))
    if not store.triggers:
        return pretrained
    scores = task_scores(image0, [p.to(images.device) for p in store.prototypes])  # (B, S)
    selected = select_tasks(scores, top_k)  # (B, K)
    weights = aggregation_weights(scores, selected, weighting, temperature)  # (B, 1 + K)
    return aggregate_logits(pretrained, lambda s, rows: store.logits(model, s, images[rows]), selected, weights)
