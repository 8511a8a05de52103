"""RAIL's plugin: the method's hooks on any ``SupervisedTemplate`` (docs/methods/rail.md).

Training-free: nothing is trained by backpropagation. After training experience t (``after_training_exp``)
the plugin reads the frozen model's L2-normalised image features of the experience's training data (its
training transform, the model in eval mode, no gradients) and updates its state with the pure functions of
:mod:`.maths`:

- primal: h = ReLU(P f) with P frozen and seeded, then one recursive-least-squares block update of (R, W)
  per minibatch (:func:`~.maths.rls_update`);
- dual: the features are appended to the stored ones and α = (K + λI)⁻¹ Y is solved again over all of them
  (:func:`~.maths.kernel_ridge_fit`), as the official code does after every domain.

At evaluation ``after_eval_forward`` replaces ``strategy.mb_output`` by the fused scores
(:func:`~.maths.fuse`): the model's zero-shot logits over the active classes (the label space
:class:`~strategies.training.LabelSpacePlugin` set), mixed with the adapter's scores where the zero-shot
arg-max is a class fit so far; inactive classes stay masked. :class:`~.strategy.RAIL` computes them in its
own forward from one image pass (:meth:`RAILPlugin.deliver`).

The dual variant refuses, before any work, a stream whose stored features would exceed
``max_kernel_memory`` (:func:`~.config.check_kernel_memory`; the suite validator runs the same check).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.utils.data import DataLoader

from ..clip import MASKED_LOGIT
from .config import RAILConfig, check_kernel_memory, class_counts, stored_count
from .maths import (
    F64,
    expand,
    fuse,
    kernel_ridge_fit,
    kernel_ridge_scores,
    random_projection,
    rls_init,
    rls_update,
)

log = logging.getLogger(__name__)


class RAILPlugin(SupervisedPlugin):
    """RAIL on any template: fit after each training experience, fused prediction in evaluation.

    ``RAILPlugin(variant="primal", seed=0)`` or ``RAILPlugin(cfg)``; ``seed`` draws the primal projection
    and the dual variant's ``kernel_shots`` subsample.
    """

    def __init__(self, cfg: RAILConfig | None = None, *, seed: int = 0, **options: Any) -> None:
        super().__init__()
        if cfg is not None and options:
            raise TypeError("RAILPlugin: pass either a RAILConfig or keyword options, not both")
        self.cfg = cfg if cfg is not None else RAILConfig(**options)
        if self.cfg.variant not in ("primal", "dual"):
            raise ValueError(f"RAIL: variant={self.cfg.variant!r}; allowed: primal, dual")
        self.seed = seed
        self.seen: list[int] = []  # global class ids the adapter was fit on
        self.tensors: dict[str, Tensor] = {}  # primal: r (d, d), w (d, C); dual: features (N, D), labels (N,), alpha
        self.projection: Tensor | None = None  # primal: P (d, D), regenerated from the seed, never stored
        self._checked = False
        self._delivered = False

    # ---- training hooks ----------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if not self._checked and self.cfg.variant == "dual":
            self._check_memory(strategy)
        self._checked = True

    def _check_memory(self, strategy: Any) -> None:
        """The dual bound over the whole training stream, before the first experience's work."""
        stream = getattr(strategy.experience, "origin_stream", None)
        if stream is None:
            return
        counts = class_counts(stream)
        check_kernel_memory(stored_count(counts, self.cfg.kernel_shots), feature_width(strategy.model),
                            len(strategy.model.class_prompts), self.cfg)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.fit(strategy.model, strategy.experience, batch_size=strategy.train_mb_size,
                 num_workers=int(kwargs.get("num_workers", 0)))

    def fit(self, model: Any, experience: Any, *, batch_size: int, num_workers: int = 0) -> None:
        """Update the state with one experience's training data (see the module docstring)."""
        classes = len(model.class_prompts)
        batches = self._feature_batches(model, experience, batch_size, num_workers)
        if self.cfg.variant == "primal":
            for features, labels in batches:
                self._rls_step(features, labels, classes)
        else:
            new = list(batches)
            self._store(torch.cat([f for f, _ in new]), torch.cat([y for _, y in new]), classes)
        self.seen = sorted(set(self.seen) | {int(c) for c in experience.classes_in_this_experience})
        log.info("RAIL (%s): fit on experience %d, %d classes seen, state %.1f MiB", self.cfg.variant,
                 experience.current_experience, len(self.seen), self.storage() / 2**20)

    def _feature_batches(self, model: Any, experience: Any, batch_size: int, num_workers: int) -> Any:
        """(features (B, D) float64, labels (B,)) per minibatch of the experience's training data, with its
        training transform, the model in eval mode and no gradients (a generator)."""
        data = experience.dataset.train()
        if self.cfg.variant == "dual" and self.cfg.kernel_shots is not None:
            data = data.subset(self._shot_indices(data.targets, experience.current_experience))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers):
                    yield model.encode_image(batch[0].to(model.device)).to(F64), batch[1].to(model.device)
        finally:
            model.train(was_training)

    def _shot_indices(self, targets: Any, experience: int) -> list[int]:
        """At most ``kernel_shots`` indices per class, drawn with the seed (and the experience index)."""
        labels = torch.as_tensor(list(targets))
        gen = torch.Generator().manual_seed(self.seed * 100_003 + experience)
        keep = []
        for c in labels.unique().tolist():
            where = (labels == c).nonzero().flatten()
            keep += where[torch.randperm(len(where), generator=gen)[: self.cfg.kernel_shots]].tolist()
        return sorted(keep)

    def _rls_step(self, features: Tensor, labels: Tensor, classes: int) -> None:
        if self.projection is None:
            self.projection = random_projection(features.shape[1], self.cfg.projection_width, self.seed,
                                                device=features.device)
        if "r" not in self.tensors:
            self.tensors["r"], self.tensors["w"] = rls_init(self.cfg.projection_width, classes, self.cfg.ridge,
                                                            device=features.device)
        targets = F.one_hot(labels, classes).to(F64)  # (B, C)
        rls_update(self.tensors["r"], self.tensors["w"], expand(features, self.projection), targets)

    def _store(self, features: Tensor, labels: Tensor, classes: int) -> None:
        if "features" in self.tensors:
            features = torch.cat([self.tensors["features"], features])
            labels = torch.cat([self.tensors["labels"], labels])
        self.tensors["features"], self.tensors["labels"] = features, labels
        self.tensors["alpha"] = kernel_ridge_fit(features, F.one_hot(labels, classes).to(F64),
                                                 self.cfg.kernel_ridge, self.cfg.gamma)

    # ---- prediction --------------------------------------------------------------------------
    def adapter_scores(self, features: Tensor) -> Tensor:
        """The adapter's regression scores of L2-normalised features (B, D) over every class, float64
        (zero before any fit and for classes never fit). (B, C)"""
        self.follow_device(features.device)
        if self.cfg.variant == "primal" and "w" in self.tensors:
            if self.projection is None:
                self.projection = random_projection(features.shape[1], self.cfg.projection_width, self.seed,
                                                    device=features.device)
            return expand(features, self.projection) @ self.tensors["w"]
        if self.cfg.variant == "dual" and "alpha" in self.tensors:
            return kernel_ridge_scores(features, self.tensors["features"], self.tensors["alpha"], self.cfg.gamma)
        return torch.zeros(features.shape[0], 1, dtype=F64, device=features.device)

    def fused(self, model: Any, features: Tensor, logits: Tensor) -> Tensor:
        """The prediction from the image features and the model's zero-shot logits (masked inactive
        classes keep ``MASKED_LOGIT``). (B, K)"""
        scores = self.adapter_scores(features).float()
        scores = F.pad(scores, (0, logits.shape[1] - scores.shape[1]))  # (B, K): 0 for classes never fit
        seen = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        seen[self.seen] = True
        active = torch.zeros_like(seen)
        active[model.active_classes] = True
        out = fuse(logits, scores, seen, self.cfg.fusion_weight)
        return out.masked_fill(~active, MASKED_LOGIT)

    def deliver(self, model: Any, images: Tensor) -> Tensor:
        """Fused scores from a strategy's own forward (one image pass; ``after_eval_forward`` keeps them)."""
        self._delivered = True
        features = model.encode_image(images)
        return self.fused(model, features, model.logits_from_features(features, model.text_features()))

    def after_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        if not self._delivered:
            with torch.no_grad():
                features = strategy.model.encode_image(strategy.mb_x)
            strategy.mb_output = self.fused(strategy.model, features, strategy.mb_output)
        self._delivered = False

    # ---- state -------------------------------------------------------------------------------
    def follow_device(self, device: torch.device) -> None:
        """Move the state to ``device`` (after a checkpoint load on the CPU, or a model moved)."""
        for name, tensor in self.tensors.items():
            if tensor.device != device:
                self.tensors[name] = tensor.to(device)
        if self.projection is not None and self.projection.device != device:
            self.projection = self.projection.to(device)

    def storage(self) -> int:
        """Bytes of the state kept across experiences (R, W; or the stored features, labels and α)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def extra_state(self) -> dict[str, int]:
        """Bytes per kind of state beyond the backbone (:mod:`strategies.cost`): primal R and W (and the
        projection, held in memory, regenerated from the seed on resume); dual the stored features with
        their labels, and α."""
        def size(*names: str) -> int:
            return sum(self.tensors[n].numel() * self.tensors[n].element_size() for n in names if n in self.tensors)

        if self.cfg.variant == "primal":
            projection = 0 if self.projection is None else self.projection.numel() * self.projection.element_size()
            return {"rail_matrices": size("r", "w"), "rail_projection": projection}
        return {"rail_features": size("features", "labels"), "rail_alpha": size("alpha")}

    def state_dict(self) -> dict[str, Any]:
        """Tensors (on the CPU) and plain values only (runs.checkpoint loads with weights_only=True); the
        projection is not stored: its seed regenerates it."""
        return {"variant": self.cfg.variant, "seen": list(self.seen), "checked": self._checked,
                "tensors": {name: t.cpu() for name, t in self.tensors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["variant"] != self.cfg.variant:
            raise ValueError(f"RAIL: a checkpoint of variant {state['variant']!r} cannot resume variant "
                             f"{self.cfg.variant!r}")
        self.seen = [int(c) for c in state["seen"]]
        self._checked = bool(state["checked"])
        self.tensors = dict(state["tensors"])
        self.projection = None


def feature_width(model: Any, default: int = 512) -> int:
    """D, the width of the model's image features (open_clip's ``visual.output_dim``)."""
    return int(getattr(getattr(getattr(model, "clip", None), "visual", None), "output_dim", default))
