"""The merging baselines' plugin: their hooks on any ``SupervisedTemplate`` (docs/methods/merging.md).

``Naive(plugins=[MergingPlugin(model, TIESConfig(k=20))])`` runs TIES; :mod:`.strategy`'s classes add the
plugin and take the options by keyword. The state lives in a :class:`~.merges.Merge`; the hooks only call it:

- before training experience t: the start weights into the trainable tensors — θ⁰ (Task Arithmetic,
  TIES) or the last fine-tuned θ_{t−1} (MagMax's sequential fine-tuning);
- after it: δ_t = θ_t − θ⁰ folded into the merge, then the merged model θ⁰ + λ·τ of the tasks so far
  loaded into the trainable tensors. One merged model serves every task: the evaluation after the
  experience (and any later one) sees it through the template's plain forward.

An evaluation inside an experience's training (Avalanche's ``eval_every``) sees the weights being trained,
and changes nothing: the plugin has no evaluation hook.
"""

from __future__ import annotations

import logging
from typing import Any

from avalanche.core import SupervisedPlugin

from ..clip import CLIPClassifier
from .config import MergingConfig
from .merges import Merge, make_merge

__all__ = ["MergingPlugin"]

log = logging.getLogger(__name__)


class MergingPlugin(SupervisedPlugin):
    """Task Arithmetic, TIES or MagMax on any template (the config's class picks the method).

    Build it right after the model: θ⁰ is the value of the model's trainable tensors at construction.
    """

    def __init__(self, model: CLIPClassifier, cfg: MergingConfig, *, chunk_bytes: int | None = None) -> None:
        super().__init__()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError("merging needs trainable parameters: set model.units.kind to full or lora")
        self.cfg = cfg
        self.merge: Merge = make_merge(params, cfg, chunk_bytes=chunk_bytes)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.merge.start_task()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.merge.add()
        self.merge.load_merged()
        log.info("%s: merged %d task(s), λ = %g", self.merge.name, self.merge.tasks, self.merge.scaling())

    # ---- cost and checkpoint ---------------------------------------------------------------------
    def extra_state(self) -> dict[str, int]:
        """Bytes beyond the backbone (:mod:`strategies.cost`): θ⁰, and the merge's state — Task Arithmetic's
        running sum, MagMax's running max and last fine-tuned weights, TIES's trimmed deltas (mask bits
        and kept values)."""
        return self.merge.stored()

    def state_dict(self) -> dict[str, Any]:
        return self.merge.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.merge.load_state_dict(state)
