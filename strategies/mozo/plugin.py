"""MoZO's plugin: a zeroth-order update of the selected units next to the first-order step.

Works on any Avalanche ``SupervisedTemplate`` whose model is a :class:`~strategies.clip.CLIPClassifier`
(``Naive(model, optimizer, plugins=[MoZOPlugin(branch="dual", layers="all")])`` included). At
``before_training`` the units chosen by the selector (branch × layers) are taken out of autograd;
the others stay first-order (FO) and are updated by the strategy's optimizer (which may have been
built before: Avalanche re-collects the parameters, and parameters without a gradient are skipped).
At every iteration, after the FO backward and before the FO optimizer step (so both updates are
estimated at the same θ), the plugin runs one ZO step over the ZO units (MoZO §3, :mod:`.zo`):
per-branch ε (ε_vision < ε_language), sign-normalised estimate, conservative candidate selection.

The plugin only wires hooks to MoZO's parts: the step's seeded FO forward (:mod:`.seeded`), the
losses it evaluates (:mod:`.closures`: feature reuse, penalty replay), the replayed unit noise
(:mod:`.noise`) and prefix activations (:mod:`.prefix`). Choices where the paper is silent
(docs/methods/mozo.md, "Fidelity"):

- ZO learning rate: the optimizer's *current* lr (so it follows whatever schedule drives the
  optimizer), or ``zo_lr`` × current lr / base lr, the base lr being the optimizer's initial lr read
  at the first ``before_training``; ``mix`` (λ) multiplies it;
- model randomness (dropout, router noise): one model seed per step drawn independently of the
  direction seed, shared by every evaluation of the step, one stream per tower (:class:`TowerSeeds`);
- ``vision_perturbation``: how "constrain the vision perturbation" is read (see :class:`MoZOConfig`);
- other plugins' penalties: with ``penalties`` (default) every ZO loss evaluation replays the
  ``before_backward`` of Avalanche's LwF / EWC / SI / MAS plugins attached to the strategy
  (:class:`PenaltyReplay`); other plugins that touch ``before_backward`` are not replayed (they may
  sample buffers or run extra passes) and a warning says so;
- a step with no FO unit (Dual, all layers) builds no autograd graph; the loss gets a zero term
  with a gradient so that any template's ``backward`` runs;
- per-step figures (ZO loss, projected gradient, accepted candidate) are published through the
  strategy's evaluator, so every logger (W&B included) gets them.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, LwFPlugin, MASPlugin, SynapticIntelligencePlugin

from ..clip import CLIPClassifier, UnitKey
from ..clip.units import set_noise_recorder
from .closures import PenaltyReplay, StepLosses
from .config import MoZOConfig, make_config
from .noise import NoiseTape, only_units_draw_noise
from .prefix import PrefixCache
from .seeded import SeededForward, TowerSeeds
from .selector import select_zo_units
from .zo import LossFn, ZOGroup, ZOStepResult, zo_step

__all__ = ["PENALTY_PLUGINS", "MoZOConfig", "MoZOPlugin"]

logger = logging.getLogger(__name__)

# before_backward only adds a penalty computed from (model, mb_x, mb_output): safe to replay per probe
PENALTY_PLUGINS: tuple[type, ...] = (LwFPlugin, EWCPlugin, SynapticIntelligencePlugin, MASPlugin)
CANDIDATE_CODES = {"theta": 0, "minus": -1, "plus": 1, "aggressive": 2, "probe": 3}  # MoZO/candidate figure


@dataclass
class _Step:
    """One iteration's seeds and what its FO forward left for the ZO step."""

    seed: int  # direction seed
    forward: SeededForward  # the FO forward under the step's model seed (TowerSeeds)
    reuse: bool  # that forward runs at the probes' precision: its L(θ), features, prefix and noise serve
    at_theta: tuple[torch.Tensor, torch.Tensor] | None = None  # its (image, text) features

    @property
    def model_seed(self) -> int:
        return self.forward.seeds.vision


class MoZOPlugin(SupervisedPlugin):
    """ZO / FO partition at ``before_training``, one ZO step per iteration in ``before_update``.

    ``MoZOPlugin(branch="dual", layers="hop-even", eps_vision=5e-4)`` or ``MoZOPlugin(cfg)``; ``seed``
    seeds the plugin's own generator (direction and model seeds of every step).

    The step's forwards (docs/methods/mozo.md, "MoZO step cost"): the seeds are drawn at
    ``before_training_iteration`` and the first-order forward runs under the step's model randomness
    (:class:`~strategies.mozo.seeded.SeededForward`), so L(θ) (criterion plus replayed penalties of its
    logits), the features at θ, the units' noise (:class:`~strategies.mozo.noise.NoiseTape`) and, for
    layer-wise configurations, the activations below each tower's lowest ZO layer
    (:class:`~strategies.mozo.prefix.PrefixCache`) are taken from it instead of being recomputed: 4 ZO
    forwards per conservative step instead of 5. This holds when that forward ran at the probes'
    precision (``probe_precision``); otherwise every ZO evaluation is computed. ``reuse_forward=False``
    computes everything from scratch under the same seeds: the reference step the equality test
    compares with (same update).
    """

    def __init__(self, cfg: MoZOConfig | None = None, *, seed: int = 0, reuse_forward: bool = True,
                 **options: Any) -> None:
        super().__init__()
        self.cfg = make_config(cfg, **options)
        self.generator = torch.Generator().manual_seed(seed)
        self.reuse_forward = reuse_forward
        self.base_lr: float | None = None
        self.model: CLIPClassifier | None = None
        self.zo_keys: set[UnitKey] = set()
        self.fo_keys: set[UnitKey] = set()
        self.groups: list[ZOGroup] = []
        self.penalty_plugins: list[SupervisedPlugin] = []
        self.prefix: PrefixCache | None = None
        self.tape: NoiseTape | None = None  # the units' dropout masks / router noise of the step
        self.last: ZOStepResult | None = None
        self._step: _Step | None = None  # the current iteration (before_training_iteration .. before_update)

    # ---- set-up --------------------------------------------------------------------------------
    def attach(self, model: CLIPClassifier) -> None:
        """Partition ``model``'s units into ZO and FO and take the ZO units out of autograd."""
        if self.model is model:
            return
        if not isinstance(getattr(model, "units", None), dict):
            raise TypeError(f"MoZOPlugin needs a CLIPClassifier with units, got {type(model).__name__}")
        self.zo_keys = select_zo_units(model.units.keys(), self.cfg.branch, self.cfg.layers,
                                       one_based=self.cfg.one_based)
        self.fo_keys = set(model.units) - self.zo_keys
        self.groups = self._make_groups(model)
        for group in self.groups:
            for p in group.params:
                p.requires_grad_(False)  # ZO units live outside autograd: no activations stored for them
        self.prefix = PrefixCache(model.clip, self.zo_keys)
        self.tape = NoiseTape() if self.reuse_forward and only_units_draw_noise(model) else None
        set_noise_recorder(model, self.tape)
        self.model = model

    def _make_groups(self, model: CLIPClassifier) -> list[ZOGroup]:
        cfg = self.cfg
        eps = {"vision": cfg.eps_vision, "language": cfg.eps_language}
        # "scaled": the vision update is multiplied by ε_v/ε_l (the sign-normalised step is ±lr·z otherwise)
        scale = {"vision": cfg.eps_vision / cfg.eps_language if cfg.vision_perturbation == "scaled" else 1.0,
                 "language": 1.0}
        groups = []
        for branch in ("vision", "language"):
            params: list[torch.Tensor] = [
                p for key in sorted(self.zo_keys) if key[0] == branch for p in model.units[key].parameters()
            ]
            if params:
                groups.append(ZOGroup(branch, params, eps[branch], cfg.zo_weight_decay, scale[branch]))
        return groups

    def _prepare(self, strategy: Any) -> None:
        self.attach(strategy.model)
        if self.base_lr is None:
            group = strategy.optimizer.param_groups[0]
            self.base_lr = float(group.get("initial_lr", group["lr"]))

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        self._prepare(strategy)
        storage = getattr(strategy.model, "storage_precision", "fp32")
        if self.cfg.probe_precision == "fp32" and self.groups and storage != "fp32":
            raise ValueError(f"MoZO probe_precision: fp32 needs model.precision: fp32 (the frozen backbone is "
                             f"stored in {storage}, which only runs under autocast); set model.precision: fp32 "
                             f"or method.probe_precision: train")
        self.penalty_plugins = []
        for plugin in getattr(strategy, "plugins", []):
            if plugin is self or isinstance(plugin, EvaluationPlugin):
                continue
            if self.cfg.penalties and isinstance(plugin, PENALTY_PLUGINS):
                self.penalty_plugins.append(plugin)
            elif type(plugin).before_backward is not SupervisedPlugin.before_backward:
                logger.warning("MoZO: %s changes the loss in before_backward; ZO probes do not include it%s",
                               type(plugin).__name__, "" if self.cfg.penalties else " (penalties: false)")

    @property
    def zo_branches(self) -> set[str]:
        return {g.name for g in self.groups}

    # ---- losses and precision (tests, diagnostics, benches) -------------------------------------
    def step_losses(self, strategy: Any, model_seed: int, at_theta: tuple[torch.Tensor, torch.Tensor] | None = None,
                    prefix: PrefixCache | None = None) -> StepLosses:
        """The losses a step under ``model_seed`` evaluates on the strategy's minibatch (:class:`StepLosses`)."""
        return StepLosses(strategy.model, strategy.mb_x, strategy.mb_y, PenaltyReplay(strategy, self.penalty_plugins),
                          self.groups, model_seed, at_theta, prefix)

    def closures(self, strategy: Any, model_seed: int, at_theta: tuple[torch.Tensor, torch.Tensor] | None = None,
                 prefix: PrefixCache | None = None) -> tuple[LossFn, list[LossFn]]:
        """The minibatch loss at the current θ, and one closure per ZO group for per-tower probes."""
        losses = self.step_losses(strategy, model_seed, at_theta, prefix)
        return losses.full, losses.per_group()

    def loss_closure(self, strategy: Any, model_seed: int = 0) -> LossFn:
        """The minibatch loss at the current θ under ``model_seed``."""
        self._prepare(strategy)
        return self.closures(strategy, model_seed)[0]

    def probe_precision(self, model: CLIPClassifier) -> str:
        """The compute precision of every ZO evaluation: fp32 (default) or the model's (``train``)."""
        return model.precision if self.cfg.probe_precision == "train" else "fp32"

    def probe_scope(self, model: CLIPClassifier) -> AbstractContextManager[None]:
        """Run the block at the probes' precision (docs/methods/mozo.md, "Probe precision")."""
        return model.precision_scope(self.probe_precision(model))

    def zo_lr(self, strategy: Any) -> float:
        """λ · (current lr, or zo_lr · current lr / base lr): the ZO step follows the optimizer's lr."""
        current = float(strategy.optimizer.param_groups[0]["lr"])
        if self.cfg.zo_lr is None:
            return self.cfg.mix * current
        return self.cfg.mix * self.cfg.zo_lr * (current / self.base_lr if self.base_lr else 1.0)

    # ---- the step's FO forward -------------------------------------------------------------------
    def _new_step(self, model: CLIPClassifier, reuse: bool) -> _Step:
        """The step's (direction, model) seeds; text features cached under other randomness are dropped."""
        if model.training:
            model.invalidate_text_cache()
        seed, model_seed = (int(v) for v in torch.randint(0, 2**31 - 2, (2,), generator=self.generator))
        return _Step(seed, SeededForward(model, TowerSeeds.of(model_seed)), reuse)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Draw the step's seeds; the FO forward runs seeded and records what the ZO step reuses."""
        self._prepare(strategy)
        self._end_forward()  # a forward left open by an interrupted iteration
        self._step = None
        if not self.groups:
            return
        model: CLIPClassifier = strategy.model
        self._step = step = self._new_step(model, self.reuse_forward and model.precision == self.probe_precision(model))
        step.forward.install()
        if step.reuse and self.prefix:
            self.prefix.record()
        if self.tape is not None:
            self.tape.clear()
            self.tape.recording = step.reuse

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        if self._step is not None and self._step.reuse:
            self._step.at_theta = self._step.forward.features
        self._end_forward()

    def _end_forward(self) -> None:
        """The FO forward is over: the model's own forward back, recording stopped."""
        if self._step is not None:
            self._step.forward.remove()
        if self.prefix is not None:
            self.prefix.stop()
        if self.tape is not None:
            self.tape.recording = False

    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._end_forward()  # an interrupted iteration must not seed evaluation

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        loss = strategy.loss
        if isinstance(loss, torch.Tensor) and not loss.requires_grad:  # no FO unit: let backward() run
            strategy.loss = loss + torch.zeros((), device=loss.device, dtype=loss.dtype, requires_grad=True)

    # ---- the ZO step ---------------------------------------------------------------------------
    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        self._prepare(strategy)
        if not self.groups:
            return
        model: CLIPClassifier = strategy.model
        self._end_forward()
        # without before_training_iteration (e.g. a hand-written loop) the step starts here
        step, self._step = self._step or self._new_step(model, reuse=False), None
        reuse = step.reuse and step.at_theta is not None
        if self.tape is not None:
            self.tape.replaying = reuse  # every ZO evaluation sees the FO forward's unit noise
        with self.probe_scope(model):
            losses = self.step_losses(strategy, step.model_seed, step.at_theta if reuse else None,
                                      self.prefix if reuse and self.prefix else None)
            # stays on the device: zo_step reads its figures back once
            loss0 = losses.of_logits(strategy.mb_output.detach()) if reuse else None
            per_tower = self.cfg.vision_perturbation == "per_tower"
            self.last = zo_step(
                self.groups, losses.full, step.seed, lr=self.zo_lr(strategy), q=self.cfg.queries,
                two_sided=self.cfg.two_sided, sign_mode=self.cfg.sign, mode=self.cfg.candidate,
                rng_seed_for_model=step.model_seed, probe="per_group" if per_tower else "joint",
                group_loss_fns=losses.per_group() if per_tower else None, loss_at_theta=loss0,
                cache_directions=self.cfg.cache_directions,
            )
        if self.prefix is not None:
            self.prefix.clear()
        if self.tape is not None:
            self.tape.clear()
        if strategy.clock.train_iterations % self.cfg.log_every == 0:
            self._publish(strategy, self.last)

    def _publish(self, strategy: Any, result: ZOStepResult) -> None:
        x = strategy.clock.train_iterations
        figures = {
            "MoZO/zo_loss": result.loss,
            "MoZO/projected_grad": sum(result.projected) / len(result.projected),
            "MoZO/candidate": CANDIDATE_CODES[result.candidate],
            "MoZO/fo_loss": float(strategy.loss.detach()),
        }
        for name, value in figures.items():
            strategy.evaluator.publish_metric_value(MetricValue(self, name, value, x))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "base_lr": self.base_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.base_lr = state.get("base_lr", self.base_lr)
