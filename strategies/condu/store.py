"""ConDU's task-model store: θ⁰, the unified delta U, the task triggers and prototypes, and the task
models rebuilt from them (ConDU §3; docs/methods/condu.md).

A plain object over the pure functions of :mod:`.fusion` — no Avalanche — holding:

- θ⁰, the trainable tensors' value when the store is built (every task is fine-tuned from it);
- U and one :class:`~.fusion.Trigger` per trained task, updated in place by :meth:`TaskModelStore.unify`
  (:func:`~.fusion.unify_into`: δᵗ = θᵗ − θ⁰ is taken chunk by chunk from the live tensors);
- the prototypes of each trained task (computed by the caller with θ⁰ loaded, :mod:`.features`);
- the live trainable tensors, and which model they hold (:attr:`TaskModelStore.loaded`): θ⁰
  (:data:`PRETRAINED`), a decoupled task model θ̃ⁱ = θ⁰ + λ_i·Mⁱ ⊙ U (task index i), or the weights
  being trained, kept aside during an evaluation inside training (:data:`TRAINING`);
- a small LRU cache of rebuilt task models (built in place by :func:`~.fusion.decouple_into`, so
  with bounded temporaries) and of each model's text features per label space, so an evaluation
  pass does not rebuild a model or re-encode the prompts per minibatch.

Checkpointable: :meth:`TaskModelStore.state_dict` holds tensors and plain values (U, the triggers'
packed masks and rescalers, the prototypes); θ⁰ is not saved, it is the model's own initial state.

Precision: the store acts on the trainable tensors only, which stay float32 whatever the training
and storage precisions are; θ⁰, U, the task models and the prototypes are float32, the rescaler sums
float64 (:mod:`.fusion`). Text features and logits come from the classifier's own methods, at its
compute precision, returned as float32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .fusion import Delta, Trigger, decouple_into, storage_report, unify_into

PRETRAINED = -1  # model id of θ⁰
TRAINING = -2  # model id of the weights being trained, kept aside during an evaluation inside training

TextKey = tuple[int, str, str, tuple[int, ...]]  # (model id, precision, prompt set, active classes)


class TaskModelStore:
    """θ⁰, U, triggers and prototypes of the trained tasks, and the loading of their models into the
    live trainable tensors ``params`` (``{name: parameter}``, updated in place)."""

    def __init__(self, params: Mapping[str, Tensor], *, rescaler: str = "mean_abs", cache_models: int = 4) -> None:
        self.params = dict(params)
        self.rescaler, self.cache_models = rescaler, cache_models
        self.theta0: Delta = {n: p.detach().clone() for n, p in self.params.items()}
        self.unified: Delta | None = None
        self.triggers: list[Trigger] = []
        self.prototypes: list[Tensor] = []  # per trained task, (C_t, D) float32 on the CPU
        self.loaded: int | None = PRETRAINED  # model in ``params``; None: unknown (training changed them)
        self._models: OrderedDict[int, Delta] = OrderedDict()  # task -> θ̃ⁱ, least recently used first
        self._training: Delta | None = None  # the weights being trained, during an evaluation inside training
        self._text: dict[TextKey, Tensor] = {}

    # ---- sessions --------------------------------------------------------------------------------
    def start_task(self) -> None:
        """Before training a task: θ⁰ into the live tensors (every task starts from θ⁰, ConDU §3)."""
        self.follow_device()
        self.load(PRETRAINED, force=True)

    def unify(self) -> int:
        """Session t (ConDU §3): δᵗ = params − θ⁰; U re-elected over {δ̃¹…δ̃ᵗ⁻¹, δᵗ} and every trigger
        recomputed, in place (:func:`~.fusion.unify_into`); then θ⁰ is loaded back. Returns t's index.

        Cached task models and text features are dropped first: they are stale, and would add to the
        session's peak memory.
        """
        self._models.clear()
        self._text.clear()
        theta = {n: p.detach() for n, p in self.params.items()}
        self.unified, self.triggers = unify_into(self.unified, self.triggers, theta, self.theta0,
                                                 rescaler=self.rescaler)
        self.load(PRETRAINED, force=True)
        return len(self.triggers) - 1

    # ---- task models -----------------------------------------------------------------------------
    def weights(self, task: int) -> Delta:
        """θ⁰ (PRETRAINED), the kept training weights (TRAINING), or θ̃ⁱ = θ⁰ + λ_i·Mⁱ ⊙ U of task i
        (ConDU §3, decoupling; rebuilt once, then kept in the LRU cache of ``cache_models``)."""
        if task == PRETRAINED:
            return self.theta0
        if task == TRAINING:
            if self._training is None:
                raise RuntimeError("ConDU: the training weights are only kept during an evaluation inside training")
            return self._training
        if task not in self._models:
            if self.unified is None:
                raise RuntimeError(f"ConDU: task {task} requested before any task was unified")
            model = {n: torch.empty_like(t, memory_format=torch.contiguous_format) for n, t in self.theta0.items()}
            decouple_into(model, self.theta0, self.unified, self.triggers[task])
            self._models[task] = model
            while len(self._models) > self.cache_models:
                self._models.popitem(last=False)
        self._models.move_to_end(task)
        return self._models[task]

    def load(self, task: int, *, force: bool = False) -> None:
        """Copy model ``task`` (see :meth:`weights`) into the live tensors, unless they hold it already."""
        if force or task != self.loaded:
            with torch.no_grad():
                for name, value in self.weights(task).items():
                    self.params[name].copy_(value)
            self.loaded = task

    def keep_training(self) -> None:
        """An evaluation starts inside training: keep a copy of the weights being trained (TRAINING)."""
        self._training = {n: p.detach().clone() for n, p in self.params.items()}
        self._drop_text(TRAINING)
        self.loaded = TRAINING

    def restore_training(self) -> None:
        """The evaluation ends: the weights being trained back into the live tensors, bit for bit."""
        self.load(TRAINING)
        self._training = None
        self._drop_text(TRAINING)
        self.loaded = None  # training goes on changing them

    def follow_device(self) -> None:
        """Keep θ⁰ and U on the live tensors' device (Avalanche moves the model after construction)."""
        device = next(iter(self.params.values())).device
        if next(iter(self.theta0.values())).device != device:
            self.theta0 = {n: t.to(device) for n, t in self.theta0.items()}
            if self.unified is not None:
                self.unified = {n: t.to(device) for n, t in self.unified.items()}
            self._models.clear()

    # ---- features of a task model ----------------------------------------------------------------
    def text_features(self, model: Any, task: int) -> Tensor:
        """Text features of model ``task`` over ``model``'s active classes, cached per label space."""
        key = (task, getattr(model, "precision", ""), getattr(model, "prompt_set", ""), tuple(model.active_classes))
        if key not in self._text:
            self.load(task)
            with torch.no_grad():
                self._text[key] = model.text_features()
        return self._text[key]

    def logits(self, model: Any, task: int, images: Tensor) -> Tensor:
        """Logits of ``images`` (B, classes) predicted by model ``task``."""
        text = self.text_features(model, task)
        self.load(task)
        with torch.no_grad():
            return model.logits_from_features(model.encode_image(images), text)

    def _drop_text(self, task: int) -> None:
        for key in [k for k in self._text if k[0] == task]:
            del self._text[key]

    # ---- storage and checkpoint ------------------------------------------------------------------
    def storage(self) -> dict[str, Any]:
        """Bytes kept (docs/methods/condu.md#storage): shared (θ⁰, U) and per task (mask bits,
        rescaler, prototypes), :func:`~.fusion.storage_report`."""
        proto = [p.numel() * p.element_size() for p in self.prototypes]
        return storage_report(self.theta0, self.unified or {}, self.triggers, proto)

    def extra_state(self) -> dict[str, int]:
        """Bytes per kind of state beyond the backbone (:mod:`strategies.cost`; the same figures as
        :meth:`storage`): θ⁰ (kept beside the live tensors), U, the triggers (mask bits and rescalers)
        and the prototypes."""
        report = self.storage()
        tasks = report["per_task"]
        return {"condu_theta0": report["theta0"], "condu_unified": report["unified"],
                "condu_triggers": sum(t["mask"] + t["rescaler"] for t in tasks),
                "condu_prototypes": sum(t["prototypes"] for t in tasks)}

    def state_dict(self) -> dict[str, Any]:
        return {"unified": self.unified, "triggers": [t.state_dict() for t in self.triggers],
                "prototypes": self.prototypes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.unified = state["unified"]
        self.triggers = [Trigger.from_state_dict(t) for t in state["triggers"]]
        self.prototypes = state["prototypes"]
        self._models.clear()
        self._text.clear()
        self.loaded = None
