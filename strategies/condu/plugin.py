"""ConDU's plugin: per-task deltas, unify/decouple sessions, prototypes, and the fused prediction.

Per experience t (ConDU §3, condu.md):
1. before training: the trainable tensors (full towers or LoRA units) are reset to θ⁰;
2. after training: δᵗ = θᵗ − θ⁰; ``unify`` re-elects the unified delta U over the decoupled old
   deltas and δᵗ and recomputes every trigger; the task's prototypes are computed with the frozen
   pretrained model (θ⁰): P_k = normalize((mean normalize(f_img) + normalize(f_txt(k))) / 2);
3. evaluation of experience j: *task-aware* — if task j was trained, its decoupled model
   θ̃ʲ = θ⁰ + λ_j Mʲ ⊙ U; *aggregated* (task-agnostic, and zero-shot on tasks not trained yet) — the
   pretrained model plus the top-K tasks by max prototype cosine of the pretrained image feature,
   logits averaged (uniform by default).

Reconstructed task models are kept in a small LRU cache of parameter tensors, and their text
features per label space, so an evaluation pass does not rebuild a model per minibatch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from torch.utils.data import DataLoader

from ..clip import CLIPClassifier
from .fusion import Trigger, decouple, storage_report, unify_into
from .prototypes import aggregate_logits, aggregation_weights, class_prototypes, select_tasks, task_scores

log = logging.getLogger(__name__)
PRETRAINED = -1  # model id of θ⁰ in caches


@dataclass
class ConDUConfig:
    inference: Literal["auto", "task_aware", "aggregated"] = "auto"  # auto: task-aware when evaluation is (MTIL)
    top_k: int = 4  # tasks aggregated per image (plus the pretrained model)
    weighting: Literal["uniform", "similarity", "softmax"] = "uniform"  # mixing of the selected models
    temperature: float = 0.1  # softmax weighting temperature
    rescaler: Literal["mean_abs", "l1"] = "mean_abs"  # trigger rescaler: code's mean-abs ratio or global L1
    prototype_images: int | None = None  # images per experience used for prototypes (None = all)
    cache_models: int = 4  # reconstructed task models kept in memory


class ConDUPlugin(SupervisedPlugin):
    """Holds θ⁰, U, triggers and prototypes; swaps task models in and out of the classifier."""

    def __init__(self, model: CLIPClassifier, cfg: ConDUConfig, *, task_aware: bool) -> None:
        """``task_aware``: evaluation knows the task (MTIL, or ``eval.task_aware``); used by ``auto``."""
        super().__init__()
        if cfg.top_k < 0 or cfg.cache_models < 1:
            raise ValueError("method.top_k must be >= 0 and method.cache_models >= 1")
        self.cfg = cfg
        self.task_aware = cfg.inference == "task_aware" or (cfg.inference == "auto" and task_aware)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("ConDU needs trainable parameters: set model.units.kind to full or lora")
        self.theta0 = {n: p.detach().clone() for n, p in self.params.items()}
        self.unified: dict[str, torch.Tensor] | None = None
        self.triggers: list[Trigger] = []
        self.prototypes: list[torch.Tensor] = []  # per trained task, (C_t, D) on CPU
        self.task_of_experience: dict[int, int] = {}  # experience index -> task index
        self._models: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._text: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        self.loaded: int | None = PRETRAINED  # model currently in the classifier; None: unknown (reload)

    # ---- model swapping ----------------------------------------------------------------------
    def _weights(self, task: int) -> dict[str, torch.Tensor]:
        if task == PRETRAINED:
            return self.theta0
        if task not in self._models:
            if self.unified is None:
                raise RuntimeError(f"ConDU: task {task} requested before any task was unified")
            delta = decouple(self.unified, self.triggers[task])
            self._models[task] = {n: self.theta0[n] + delta[n] for n in self.theta0}
            while len(self._models) > self.cfg.cache_models:
                self._models.popitem(last=False)
        self._models.move_to_end(task)
        return self._models[task]

    def load(self, task: int) -> None:
        """Put θ⁰ (task = PRETRAINED) or the decoupled model of ``task`` into the classifier."""
        if task != self.loaded:
            with torch.no_grad():
                for name, value in self._weights(task).items():
                    self.params[name].copy_(value)
            self.loaded = task

    def text_features(self, model: CLIPClassifier, task: int) -> torch.Tensor:
        key = (task, tuple(model.active_classes))
        if key not in self._text:
            self.load(task)
            with torch.no_grad():
                self._text[key] = model.text_features()
        return self._text[key]

    def logits(self, model: CLIPClassifier, task: int, images: torch.Tensor) -> torch.Tensor:
        text = self.text_features(model, task)
        self.load(task)
        with torch.no_grad():
            return model.logits_from_features(model.encode_image(images), text)

    # ---- training hooks ----------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.loaded = None  # training changes the weights: force a reload from θ⁰
        self.load(PRETRAINED)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        model: CLIPClassifier = strategy.model
        self._models.clear()  # before unify: cached task models are stale and would add to its peak
        self._text.clear()
        # δᵗ = θᵗ − θ⁰ taken chunk by chunk; U and the triggers updated in place (bounded extra memory)
        theta = {n: p.detach() for n, p in self.params.items()}
        self.unified, self.triggers = unify_into(self.unified, self.triggers, theta, self.theta0,
                                                 rescaler=self.cfg.rescaler)
        self.task_of_experience[strategy.experience.current_experience] = len(self.triggers) - 1
        self.loaded = None
        self.load(PRETRAINED)
        self.prototypes.append(self._task_prototypes(strategy, model))
        self._publish_storage(strategy)

    def _task_prototypes(self, strategy: Any, model: CLIPClassifier) -> torch.Tensor:
        """Prototypes of the experience's classes with the pretrained model (loaded by the caller)."""
        classes = sorted(strategy.experience.classes_in_this_experience)
        loader = DataLoader(strategy.experience.dataset.eval(), batch_size=strategy.eval_mb_size, shuffle=False)
        feats, labels, seen = [], [], 0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in loader:
                x, y = batch[0].to(strategy.device), batch[1]
                feats.append(model.encode_image(x).cpu())
                labels.append(y)
                seen += len(y)
                if self.cfg.prototype_images is not None and seen >= self.cfg.prototype_images:
                    break
            text = model.text_features(classes).cpu()
        model.train(was_training)
        return class_prototypes(torch.cat(feats), torch.cat(labels), text, classes)

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
        proto = [p.numel() * p.element_size() for p in self.prototypes]
        return storage_report(self.theta0, self.unified or {}, self.triggers, proto)

    # ---- inference ---------------------------------------------------------------------------
    def predict(self, model: CLIPClassifier, images: torch.Tensor, experience: int) -> torch.Tensor:
        """Logits for a test minibatch of experience ``experience`` (see the module docstring)."""
        task = self.task_of_experience.get(experience)
        if self.task_aware and task is not None:
            return self.logits(model, task, images)
        self.load(PRETRAINED)
        with torch.no_grad():
            image0 = model.encode_image(images)
            pretrained = model.logits_from_features(image0, self.text_features(model, PRETRAINED))
        if not self.triggers:
            return pretrained
        scores = task_scores(image0, [p.to(images.device) for p in self.prototypes])  # (B, S)
        selected = select_tasks(scores, self.cfg.top_k)  # (B, K)
        weights = aggregation_weights(scores, selected, self.cfg.weighting, self.cfg.temperature)
        return aggregate_logits(pretrained, lambda s, rows: self.logits(model, s, images[rows]), selected, weights)

    # ---- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "unified": self.unified, "triggers": [t.state_dict() for t in self.triggers],
            "prototypes": self.prototypes, "task_of_experience": self.task_of_experience,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unified = state["unified"]
        self.triggers = [Trigger.from_state_dict(t) for t in state["triggers"]]
        self.prototypes = state["prototypes"]
        self.task_of_experience = dict(state["task_of_experience"])
        self._models.clear()
        self._text.clear()
        self.loaded = None
