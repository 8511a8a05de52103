"""ConDU's plugin: per-task deltas, unify/decouple sessions, prototypes, and the fused prediction.

Per experience t (ConDU §3, condu.md):
1. before training: the trainable tensors (full towers or LoRA units) are reset to θ⁰;
2. after training: δᵗ = θᵗ − θ⁰; ``unify`` re-elects the unified delta U over the decoupled old
   deltas and δᵗ and recomputes every trigger; the task's prototypes are computed with the frozen
   pretrained model (θ⁰): P_k = normalize((mean normalize(f_img) + t_k) / 2), t_k the mean of the
   normalised features of the class's evaluation prompts (see ``prototype_text`` /
   ``prototype_images_from`` for the two halves);
3. evaluation of experience j: *task-aware* — if task j was trained, its decoupled model
   θ̃ʲ = θ⁰ + λ_j Mʲ ⊙ U; *aggregated* (task-agnostic, and zero-shot on tasks not trained yet) — the
   pretrained model plus the top-K tasks by max prototype cosine of the pretrained image feature,
   logits averaged (uniform by default).

The plugin delivers the prediction on any ``SupervisedTemplate`` (``Naive(plugins=[ConDUPlugin(m)])``):
``before_eval_forward`` loads the model the experience's route needs — a task's decoupled model for
task-aware evaluation, whose plain forward then *is* the prediction — and ``after_eval_forward``
replaces ``strategy.mb_output`` by the aggregated logits on the aggregated route. (:class:`ConDU`
computes the aggregated logits in its forward directly, which saves the plain forward's pass.)

``inference: auto`` (our choice; the paper evaluates MTIL task-aware and class-incremental streams
task-agnostic): task-aware when the evaluated stream is task-incremental — its experiences carry
more than one task label, as Avalanche's ``nc_benchmark(task_labels=True)`` (MTIL) gives — else
aggregated. Evaluation experience j is matched to training experience j (Avalanche's train/test
stream alignment).

Evaluation never changes the training: an evaluation inside ``strategy.train()`` (Avalanche's
``eval_every``: before training, every few epochs or iterations, after the experience) keeps a
copy of the trainable tensors and of torch's random number generators and puts them back when it
ends — the RNGs because every DataLoader iterator,
the evaluation's too, draws a seed from torch's global generator, which would shift the shuffle
order of the rest of training. So a run with periodic evaluation ends with the weights of the same
run without it. During such an evaluation, task-aware evaluation of the experience in training uses
the weights being trained; the other experiences use their routes as usual.

Reconstructed task models are kept in a small LRU cache of parameter tensors, and their text
features per label space, so an evaluation pass does not rebuild a model per minibatch.

Precision. Fusion acts on the *trainable* tensors only, and those stay float32 whatever
``train.precision`` (autocast casts them per op) and ``model.precision`` (only the frozen backbone
is stored in bf16/fp16) are: θ⁰, θᵗ, the deltas, U, the sign election and the rescalers are float32
(rescaler sums in float64, :mod:`.fusion`), and a decoupled model is written back into float32
parameters. Features for prototypes and logits come from the classifier's own methods, so they are
computed at its compute precision and returned as float32; prototypes are float32.
"""

from __future__ import annotations

import logging
import typing
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from torch.utils.data import DataLoader

from ..clip import CLIPClassifier
from ..rng import rng_state, set_rng_state
from ..training import has_several_task_labels
from .config import ConDUConfig
from .fusion import Trigger, decouple, storage_report, unify_into
from .prototypes import aggregate_logits, aggregation_weights, class_prototypes, select_tasks, task_scores

log = logging.getLogger(__name__)
PRETRAINED = -1  # model id of θ⁰ in caches
TRAINING = -2  # model id of the weights being trained, kept aside during a periodic evaluation
_PROMPT_CHUNK = 256  # prompts per text-tower pass when computing prototypes


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
    """Holds θ⁰, U, triggers and prototypes; swaps task models in and out of the classifier.

    ``ConDUPlugin(model, top_k=4, inference="aggregated")`` or ``ConDUPlugin(model, cfg)``. Build it
    right after the model: θ⁰ is the value of the model's trainable tensors at construction.
    """

    def __init__(self, model: CLIPClassifier, cfg: ConDUConfig | None = None, **options: Any) -> None:
        super().__init__()
        if cfg is not None and options:
            raise TypeError("ConDUPlugin: pass either a ConDUConfig or keyword options, not both")
        self.cfg = check_config(cfg) if cfg is not None else make_config(**options)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("ConDU needs trainable parameters: set model.units.kind to full or lora")
        self.theta0 = {n: p.detach().clone() for n, p in self.params.items()}
        self.unified: dict[str, torch.Tensor] | None = None
        self.triggers: list[Trigger] = []
        self.prototypes: list[torch.Tensor] = []  # per trained task, (C_t, D) on CPU
        self.task_of_experience: dict[int, int] = {}  # experience index -> task index
        self._models: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._text: dict[tuple[int, str, str, tuple[int, ...]], torch.Tensor] = {}
        self.loaded: int | None = PRETRAINED  # model currently in the classifier; None: unknown (reload)
        self._in_train = False  # inside strategy.train() (its periodic evaluations included)
        self._training_exp: int | None = None  # experience being trained (None outside its training)
        self._snapshot: dict[str, torch.Tensor] | None = None  # the trained weights during a periodic eval
        self._rng: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # torch RNG state at its start
        self._route: int | None = None  # model of the experience under evaluation; None: aggregated
        self._delivered = False  # the strategy's forward already returned the aggregated logits

    # ---- model swapping ----------------------------------------------------------------------
    def _weights(self, task: int) -> dict[str, torch.Tensor]:
        if task == PRETRAINED:
            return self.theta0
        if task == TRAINING:
            if self._snapshot is None:
                raise RuntimeError("ConDU: the training weights are only kept during a periodic evaluation")
            return self._snapshot
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
        """Put θ⁰ (PRETRAINED), the decoupled model of ``task``, or the kept training weights
        (TRAINING) into the classifier."""
        if task != self.loaded:
            with torch.no_grad():
                for name, value in self._weights(task).items():
                    self.params[name].copy_(value)
            self.loaded = task

    def _follow_device(self) -> None:
        """Keep θ⁰ and U on the parameters' device (Avalanche moves the model after construction)."""
        device = next(iter(self.params.values())).device
        if next(iter(self.theta0.values())).device != device:
            self.theta0 = {n: t.to(device) for n, t in self.theta0.items()}
            if self.unified is not None:
                self.unified = {n: t.to(device) for n, t in self.unified.items()}
            self._models.clear()

    def text_features(self, model: CLIPClassifier, task: int) -> torch.Tensor:
        key = (task, getattr(model, "precision", ""), getattr(model, "prompt_set", ""), tuple(model.active_classes))
        if key not in self._text:
            self.load(task)
            with torch.no_grad():
                self._text[key] = model.text_features()
        return self._text[key]

    def _drop_text(self, task: int) -> None:
        for key in [k for k in self._text if k[0] == task]:
            del self._text[key]

    def logits(self, model: CLIPClassifier, task: int, images: torch.Tensor) -> torch.Tensor:
        text = self.text_features(model, task)
        self.load(task)
        with torch.no_grad():
            return model.logits_from_features(model.encode_image(images), text)

    # ---- training hooks ----------------------------------------------------------------------
    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        self._in_train = True

    def after_training(self, strategy: Any, **kwargs: Any) -> None:
        self._in_train = False

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._follow_device()
        self._training_exp = strategy.experience.current_experience
        self.loaded = None  # training changes the weights: force a reload from θ⁰
        self.load(PRETRAINED)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._training_exp = None
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
        was_training = model.training
        model.eval()
        feats, labels = self._image_features(strategy, model)
        text = self._template_means(model, classes)
        model.train(was_training)
        return class_prototypes(feats, labels, text, classes, normalize_text=self.cfg.prototype_text == "normalized")

    def _image_features(self, strategy: Any, model: CLIPClassifier) -> tuple[torch.Tensor, torch.Tensor]:
        """Pretrained image features (N, D) and labels (N,) of the experience's training data, with
        the training transform (the official code's train loader) or, ``prototype_images_from: eval``,
        the evaluation transform."""
        data = strategy.experience.dataset
        data = data.train() if self.cfg.prototype_images_from == "train" else data.eval()
        loader = DataLoader(data, batch_size=strategy.eval_mb_size, shuffle=False)
        feats, labels, seen = [], [], 0
        with torch.no_grad():
            for batch in loader:
                feats.append(model.encode_image(batch[0].to(strategy.device)).cpu())
                labels.append(batch[1])
                seen += len(batch[1])
                if self.cfg.prototype_images is not None and seen >= self.cfg.prototype_images:
                    break
        return torch.cat(feats), torch.cat(labels)

    @staticmethod
    def _template_means(model: CLIPClassifier, classes: list[int]) -> torch.Tensor:
        """t_k = mean over the evaluation prompts of class k of normalize(f_txt(prompt)), not
        re-normalised (official src/models/finetune.py); (C, D) on CPU."""
        use = getattr(model, "using_prompts", None)  # the evaluation prompt set, where the model has two
        with use("eval") if use is not None else nullcontext(), torch.no_grad():
            prompts = [p for c in classes for p in model.class_prompts[c]]
            owner = torch.repeat_interleave(torch.arange(len(classes)),
                                            torch.tensor([len(model.class_prompts[c]) for c in classes]))  # (P,)
            # the classifier's text forward: its compute precision, float32 features
            feats = [F.normalize(model.encode_text(model.tokenizer(prompts[i:i + _PROMPT_CHUNK])), dim=-1).cpu()
                     for i in range(0, len(prompts), _PROMPT_CHUNK)]
        sums = torch.zeros(len(classes), feats[0].shape[1]).index_add_(0, owner, torch.cat(feats))  # (C, D)
        return sums / torch.bincount(owner, minlength=len(classes)).unsqueeze(1)

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

    # ---- evaluation hooks --------------------------------------------------------------------
    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._follow_device()
        if self._in_train:  # evaluation inside train() (Avalanche's eval_every): keep the training state
            self._snapshot = {n: p.detach().clone() for n, p in self.params.items()}
            self._rng = rng_state()
            self.loaded = TRAINING
        self._drop_text(TRAINING)

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        if self._snapshot is not None:
            self.load(TRAINING)  # the weights being trained, bit for bit
            if self._rng is not None:
                set_rng_state(self._rng)
            self._snapshot, self._rng = None, None
            self.loaded = None
            self._drop_text(TRAINING)

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._route = self.route(strategy.experience)

    def before_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        self._delivered = False
        self.load(PRETRAINED if self._route is None else self._route)

    def after_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        if self.aggregating and not self._delivered:
            strategy.mb_output = self.aggregated(strategy.model, strategy.mb_x)

    @property
    def aggregating(self) -> bool:
        """The experience under evaluation is predicted by aggregation over trained tasks."""
        return self._route is None and bool(self.triggers)

    def deliver(self, model: CLIPClassifier, images: torch.Tensor) -> torch.Tensor:
        """Aggregated logits from a strategy's own forward (``after_eval_forward`` then keeps them)."""
        self._delivered = True
        return self.aggregated(model, images)

    # ---- inference ---------------------------------------------------------------------------
    def route(self, experience: Any) -> int | None:
        """Model that predicts evaluation experience ``experience``: a task index, TRAINING (the
        experience in training, task-aware), or None (aggregated)."""
        if not self._is_task_aware(experience):
            return None
        index = experience.current_experience
        task = self.task_of_experience.get(index)
        if task is not None:
            return task
        return TRAINING if index == self._training_exp and self._snapshot is not None else None

    def _is_task_aware(self, experience: Any) -> bool:
        if self.cfg.inference != "auto":
            return self.cfg.inference == "task_aware"
        return has_several_task_labels(experience)

    def predict(self, model: CLIPClassifier, images: torch.Tensor, experience: int,
                task_aware: bool | None = None) -> torch.Tensor:
        """Logits for a test minibatch of experience index ``experience``; ``task_aware`` None:
        task-aware only under ``inference: task_aware`` (``auto`` needs the stream, see :meth:`route`)."""
        aware = self.cfg.inference == "task_aware" if task_aware is None else task_aware
        task = self.task_of_experience.get(experience) if aware else None
        if task is not None:
            return self.logits(model, task, images)
        return self.aggregated(model, images)

    def aggregated(self, model: CLIPClassifier, images: torch.Tensor) -> torch.Tensor:
        """Pretrained logits plus the top-K tasks' by prototype score (module docstring, step 3)."""
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
