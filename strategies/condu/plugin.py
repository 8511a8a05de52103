"""ConDU's plugin: the method's hooks on any ``SupervisedTemplate`` (ConDU §3; docs/methods/condu.md).

``Naive(plugins=[ConDUPlugin(model)])`` runs ConDU; :class:`~.strategy.ConDU` adds the plugin and
takes the options by keyword. The state lives in a :class:`~.store.TaskModelStore` (θ⁰, U, triggers,
prototypes, the task models); the hooks only call it and the pure functions:

- before training experience t: θ⁰ into the trainable tensors (:meth:`~.store.TaskModelStore.start_task`);
- after it: the session (:meth:`~.store.TaskModelStore.unify`, δᵗ = θᵗ − θ⁰), then the task's
  prototypes with θ⁰ (:func:`~.features.experience_prototypes`), and the storage published;
- before evaluation experience j: its route (:func:`~.inference.route`, the one place deciding
  task-aware vs aggregated); a task-aware route's model is loaded once for the whole experience,
  so the template's plain forward *is* the prediction; on the aggregated route,
  ``after_eval_forward`` replaces ``strategy.mb_output`` by :func:`~.inference.aggregated_logits`
  (``ConDU``'s forward computes them directly through :meth:`ConDUPlugin.deliver`, saving the plain
  forward). The aggregated route loads the pretrained and the selected tasks' models per
  minibatch: each model's image tower must see the minibatch (docs/methods/condu.md#inference).

Evaluation never changes the training (docs/methods/condu.md#as-avalanche-parts): an evaluation
inside ``strategy.train()`` (Avalanche's ``eval_every``: before training, every few epochs or
iterations, after the experience) keeps the weights being trained (TRAINING) and torch's RNG state —
every DataLoader iterator, the evaluation's too, draws a seed from torch's global generator, which
would shift the shuffle order of the rest of training — and puts them back when it ends. During
such an evaluation the task-aware route of the experience in training is its in-progress weights.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import fields
from typing import Any, Literal

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue

from ..clip import CLIPClassifier
from ..rng import rng_state, set_rng_state
from .config import ConDUConfig
from .features import experience_prototypes, template_means
from .fusion import Trigger
from .inference import AGGREGATED, aggregated_logits, route
from .store import PRETRAINED, TRAINING, TaskModelStore

__all__ = ["PRETRAINED", "TRAINING", "ConDUPlugin", "check_config", "make_config"]

log = logging.getLogger(__name__)
BETWEEN = -1  # inside strategy.train() but outside an experience's training (its periodic evaluations)


def check_config(cfg: ConDUConfig) -> ConDUConfig:
    """ValueError naming the field for a value outside its allowed set or range; returns ``cfg``."""
    hints = typing.get_type_hints(ConDUConfig)
    for f in fields(ConDUConfig):
        allowed = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
        value = getattr(cfg, f.name)
        if allowed and value not in allowed:
            raise ValueError(f"ConDU: {f.name}={value!r}; allowed: {', '.join(allowed)}")
    if cfg.top_k < 0 or cfg.cache_models < 1:
        raise ValueError(f"ConDU: top_k must be >= 0 (got {cfg.top_k}) and cache_models >= 1 (got {cfg.cache_models})")
    if cfg.temperature <= 0:
        raise ValueError(f"ConDU: temperature must be > 0, got {cfg.temperature}")
    if cfg.prototype_images is not None and cfg.prototype_images < 1:
        raise ValueError(f"ConDU: prototype_images must be >= 1 or None, got {cfg.prototype_images}")
    return cfg


def make_config(**options: Any) -> ConDUConfig:
    """:class:`ConDUConfig` from keyword options; TypeError listing the allowed names for unknown ones."""
    names = [f.name for f in fields(ConDUConfig)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"ConDU: unknown options {unknown}; allowed: {', '.join(names)}")
    return check_config(ConDUConfig(**options))


class ConDUPlugin(SupervisedPlugin):
    """ConDU on any template: sessions after each training experience, the prediction in evaluation.

    ``ConDUPlugin(model, top_k=4, inference="aggregated")`` or ``ConDUPlugin(model, cfg)``. Build it
    right after the model: θ⁰ is the value of the model's trainable tensors at construction.
    """

    def __init__(self, model: CLIPClassifier, cfg: ConDUConfig | None = None, **options: Any) -> None:
        super().__init__()
        if cfg is not None and options:
            raise TypeError("ConDUPlugin: pass either a ConDUConfig or keyword options, not both")
        self.cfg = check_config(cfg) if cfg is not None else make_config(**options)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError("ConDU needs trainable parameters: set model.units.kind to full or lora")
        self.store = TaskModelStore(params, rescaler=self.cfg.rescaler, cache_models=self.cfg.cache_models)
        self.task_of_experience: dict[int, int] = {}  # experience index -> task index
        self._training: int | None = None  # None outside train(); else the experience in training, or BETWEEN
        self._rng: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # RNG state kept during such an evaluation
        self._route: int | None = AGGREGATED  # route of the experience under evaluation
        self._delivered = False  # the strategy's forward already returned the aggregated logits

    # ---- views of the store (θ⁰, U, triggers, prototypes, trainable tensors) ----------------------
    @property
    def params(self) -> dict[str, torch.Tensor]:
        return self.store.params

    @property
    def theta0(self) -> dict[str, torch.Tensor]:
        return self.store.theta0

    @property
    def unified(self) -> dict[str, torch.Tensor] | None:
        return self.store.unified

    @unified.setter
    def unified(self, value: dict[str, torch.Tensor] | None) -> None:
        self.store.unified = value

    @property
    def triggers(self) -> list[Trigger]:
        return self.store.triggers

    @triggers.setter
    def triggers(self, value: list[Trigger]) -> None:
        self.store.triggers = value

    @property
    def prototypes(self) -> list[torch.Tensor]:
        return self.store.prototypes

    @prototypes.setter
    def prototypes(self, value: list[torch.Tensor]) -> None:
        self.store.prototypes = value

    _template_means = staticmethod(template_means)

    # ---- training hooks ----------------------------------------------------------------------
    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        self._training = BETWEEN

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        self._training = None

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._training = strategy.experience.current_experience
        self.store.start_task()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._training = BETWEEN
        self.task_of_experience[strategy.experience.current_experience] = self.store.unify()
        self.store.prototypes.append(experience_prototypes(  # θ⁰ is loaded: the frozen pretrained model
            strategy.model, strategy.experience, device=strategy.device, batch_size=strategy.eval_mb_size,
            images_from=self.cfg.prototype_images_from, max_images=self.cfg.prototype_images,
            normalize_text=self.cfg.prototype_text == "normalized"))
        self._publish_storage(strategy)

    def _publish_storage(self, strategy: Any) -> None:
        report = self.storage()
        x = strategy.clock.train_iterations
        per_task = report["per_task"][-1]["total"]
        for name, value in (("ConDU/storage_shared_bytes", report["shared"]),
                            ("ConDU/storage_task_bytes", per_task), ("ConDU/storage_total_bytes", report["total"])):
            strategy.evaluator.publish_metric_value(MetricValue(self, name, value, x))
        log.info("ConDU storage: shared %.1f MB, task %d %.1f KB", report["shared"] / 2**20,
                 len(self.triggers) - 1, per_task / 2**10)

    def storage(self) -> dict[str, Any]:
        """Bytes kept: shared (θ⁰, U) and per task (mask bits, rescaler, prototypes)."""
        return self.store.storage()

    def extra_state(self) -> dict[str, int]:
        """Bytes beyond the backbone per kind (:mod:`strategies.cost`): θ⁰, U, triggers, prototypes."""
        return self.store.extra_state()

    # ---- evaluation hooks --------------------------------------------------------------------
    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        self.store.follow_device()
        if self._training is not None:  # evaluation inside train() (Avalanche's eval_every): keep the training state
            self.store.keep_training()
            self._rng = rng_state()

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        if self._rng is not None:
            self.store.restore_training()  # the weights being trained, bit for bit
            set_rng_state(self._rng)
            self._rng = None

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._route, self._delivered = self.route(strategy.experience), False
        if self._route is not AGGREGATED:
            self.store.load(self._route)  # once for the experience: the plain forward is the prediction

    def after_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        if self._route is AGGREGATED and not self._delivered:
            strategy.mb_output = self.aggregated(strategy.model, strategy.mb_x)
        self._delivered = False

    @property
    def aggregating(self) -> bool:
        """The experience under evaluation is predicted by aggregation (its route is AGGREGATED)."""
        return self._route is AGGREGATED

    def deliver(self, model: CLIPClassifier, images: torch.Tensor) -> torch.Tensor:
        """Aggregated logits from a strategy's own forward (``after_eval_forward`` then keeps them)."""
        self._delivered = True
        return self.aggregated(model, images)

    # ---- inference ---------------------------------------------------------------------------
    def route(self, experience: Any) -> int | None:
        """Model that predicts evaluation experience ``experience`` (:func:`~.inference.route`)."""
        training = self._training if self._rng is not None else None  # its weights are kept aside
        return route(self.cfg.inference, experience.current_experience, self.task_of_experience,
                     experience=experience, training=training)

    def predict(self, model: CLIPClassifier, images: torch.Tensor, experience: int,
                task_aware: bool | None = None) -> torch.Tensor:
        """Logits for a test minibatch of experience index ``experience``; ``task_aware`` None:
        ``inference``, where ``auto`` is aggregated (it needs the stream, see :meth:`route`)."""
        inference = self.cfg.inference if task_aware is None else "task_aware" if task_aware else "aggregated"
        task = route(inference, experience, self.task_of_experience)
        return self.aggregated(model, images) if task is AGGREGATED else self.store.logits(model, task, images)

    def aggregated(self, model: CLIPClassifier, images: torch.Tensor) -> torch.Tensor:
        """Pretrained logits plus the top-K tasks' by prototype score (:func:`~.inference.aggregated_logits`)."""
        return aggregated_logits(self.store, model, images, top_k=self.cfg.top_k, weighting=self.cfg.weighting,
                                 temperature=self.cfg.temperature)

    def logits(self, model: CLIPClassifier, task: int, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` predicted by model ``task`` (:meth:`~.store.TaskModelStore.logits`)."""
        return self.store.logits(model, task, images)

    # ---- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self.store.state_dict(), "task_of_experience": self.task_of_experience}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store.load_state_dict(state)
        self.task_of_experience = dict(state["task_of_experience"])
