"""MoZO's plugin: a zeroth-order update of the selected units next to the first-order step.

Works on any Avalanche ``SupervisedTemplate`` whose model is a :class:`~strategies.clip.CLIPClassifier`
(``Naive(model, optimizer, plugins=[MoZOPlugin(branch="dual", layers="all")])`` included). At
``before_training`` the units chosen by the selector (branch × layers) are taken out of autograd;
the others stay first-order (FO) and are updated by the strategy's optimizer (which may have been
built before: Avalanche re-collects the parameters, and parameters without a gradient are skipped).
At every iteration, after the FO backward and before the FO optimizer step (so both updates are
estimated at the same θ), the plugin runs one ZO step over the ZO units (MoZO §3): per-branch ε
(ε_vision < ε_language), sign-normalised estimate, conservative candidate selection.

Choices where the paper is silent (documented in the README, "Fidelity / MoZO"):
- ZO learning rate: the optimizer's *current* lr (so it follows whatever schedule drives the
  optimizer), or ``zo_lr`` × current lr / base lr, the base lr being the optimizer's initial lr read
  at the first ``before_training``; ``mix`` (λ) multiplies it;
- model randomness (dropout, router noise): one model seed per step drawn independently of the
  direction seed, shared by every probe and candidate of the step; each tower gets its own stream
  (seed, seed + 1), so a tower's features are the same whether or not the other tower is recomputed;
- ``vision_perturbation``: how "constrain the vision perturbation" is read (see :class:`MoZOConfig`);
- other plugins' penalties: with ``penalties`` (default) every ZO loss evaluation replays the
  ``before_backward`` of Avalanche's LwF / EWC / SI / MAS plugins attached to the strategy, so the
  ZO units minimise the same objective as the FO units; other plugins that touch ``before_backward``
  are not replayed (they may sample buffers or run extra passes) and a warning says so;
- a step with no FO unit (Dual, all layers) builds no autograd graph; the loss gets a zero term
  with a gradient so that any template's ``backward`` runs;
- per-step figures (ZO loss, projected gradient, accepted candidate) are published through the
  strategy's evaluator, so every logger (W&B included) gets them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, LwFPlugin, MASPlugin, SynapticIntelligencePlugin

from ..clip import CLIPClassifier, UnitKey
from ..clip.units import Adapter, MoEAdapter, NoiseTape
from ..rng import run_seeded
from .config import MoZOConfig, make_config
from .prefix import PrefixCache, run_with_prefix
from .selector import select_zo_units
from .zo import LossFn, ZOGroup, ZOStepResult, zo_step

logger = logging.getLogger(__name__)

# before_backward only adds a penalty computed from (model, mb_x, mb_output): safe to replay per probe
PENALTY_PLUGINS: tuple[type, ...] = (LwFPlugin, EWCPlugin, SynapticIntelligencePlugin, MASPlugin)


def _only_units_draw_noise(model: CLIPClassifier) -> bool:
    """True when no module but the units' own dropout / router draws random numbers (the condition
    under which :class:`NoiseTape` replay is exact): no backbone dropout, attention dropout or patch
    dropout with a non-zero rate."""
    owned = {id(m) for unit in model.modules() if isinstance(unit, (Adapter, MoEAdapter)) for m in unit.modules()}
    for module in model.modules():
        if id(module) in owned:
            continue
        rate = getattr(module, "p", None) if isinstance(module, torch.nn.Dropout) else None
        if isinstance(module, torch.nn.MultiheadAttention):
            rate = module.dropout
        if type(module).__name__ == "PatchDropout":
            rate = getattr(module, "prob", 0.0)
        if rate:
            return False
    return True


def _version(tensors: list[torch.Tensor]) -> int:
    """Sum of in-place version counters: changes whenever a probe or an update touches a tensor."""
    return sum(t._version for t in tensors)


class MoZOPlugin(SupervisedPlugin):
    """ZO / FO partition at ``before_training``, one ZO step per iteration in ``before_update``.

    ``MoZOPlugin(branch="dual", layers="hop-even", eps_vision=5e-4)`` or ``MoZOPlugin(cfg)``; ``seed``
    seeds the plugin's own generator (direction and model seeds of every step).

    The step's forwards (§ "A cheaper step" in the README): the seeds are drawn at
    ``before_training_iteration`` and the first-order forward runs under the step's model randomness
    (:attr:`CLIPClassifier.tower_seeds`), so L(θ) (criterion plus replayed penalties of its logits),
    the image features at θ and, for layer-wise configurations, the activations below each tower's
    lowest ZO layer (:class:`~strategies.mozo.prefix.PrefixCache`) are taken from it instead of being
    recomputed: 4 ZO forwards per conservative step instead of 5. This holds when that forward ran at
    the probes' precision (``probe_precision``); otherwise every ZO evaluation is computed.
    ``reuse_forward=False`` computes everything from scratch under the same seeds: the reference step
    the equality test compares with (same update).
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
        self.tape: NoiseTape | None = None  # the units' dropout masks / router noise of the step (NoiseTape)
        self.last: ZOStepResult | None = None
        self._seeds: tuple[int, int] | None = None  # (direction, model) seeds of the current iteration
        self._from_forward = False  # the current iteration's FO forward ran seeded at the probes' precision
        self._at_theta: tuple[torch.Tensor, torch.Tensor] | None = None  # (image, text) features of the FO forward

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
        self.tape = NoiseTape() if self.reuse_forward and _only_units_draw_noise(model) else None
        for module in model.modules():
            if isinstance(module, (Adapter, MoEAdapter)):
                module.noise_tape = self.tape
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

    # ---- loss closures -------------------------------------------------------------------------
    def _loss(self, strategy: Any, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Criterion plus the replayed penalties of LwF / EWC / SI / MAS plugins (module docstring)."""
        loss = strategy._criterion(logits, y)
        if not self.penalty_plugins:
            return loss
        saved = strategy.mb_output, strategy.loss
        strategy.mb_output, strategy.loss = logits, loss
        try:
            for plugin in self.penalty_plugins:
                plugin.before_backward(strategy)
            return strategy.loss
        finally:
            strategy.mb_output, strategy.loss = saved

    def closures(self, strategy: Any, model_seed: int, at_theta: tuple[torch.Tensor, torch.Tensor] | None = None,
                 prefix: PrefixCache | None = None) -> tuple[LossFn, list[LossFn]]:
        """Minibatch loss at the current θ, and one closure per ZO group for per-tower probes.

        Each tower's randomness has its own seed (vision ``model_seed``, language ``model_seed + 1``),
        so the image features with the vision units at θ (detected by their version counters) are
        those any evaluation at θ computes: given (``at_theta`` = (image, text) features from the FO
        forward) or computed by the first evaluation at θ, they are reused whenever the vision units
        are at θ (language-only ZO, language probes), so a per-tower step costs the same forwards as a
        joint one; the text features of ``at_theta`` likewise while the language units are at θ
        (otherwise the model's text cache serves). ``prefix``: towers start from the activations
        recorded below their lowest ZO layer.
        """
        model: CLIPClassifier = strategy.model
        x, y = strategy.mb_x, strategy.mb_y
        vision_params = [p for g in self.groups if g.name == "vision" for p in g.params]
        language_params = [p for g in self.groups if g.name == "language" for p in g.params]
        vision_version, language_version = _version(vision_params), _version(language_params)
        kept: list[torch.Tensor] = [] if at_theta is None else [at_theta[0]]

        def encode() -> torch.Tensor:
            if prefix is None:
                return model.encode_image(x)
            return run_with_prefix(prefix, "vision", lambda: model.encode_image(x))

        def image_at_theta_fn() -> torch.Tensor:
            if not kept:
                kept.append(run_seeded(encode, model_seed))
            return kept[0]

        def image() -> torch.Tensor:
            if _version(vision_params) == vision_version:
                return image_at_theta_fn()
            return run_seeded(encode, model_seed)

        def text() -> torch.Tensor:
            if at_theta is not None and _version(language_params) == language_version:
                return at_theta[1]
            if prefix is None:
                return run_seeded(model.text_features, model_seed + 1)
            return run_seeded(lambda: run_with_prefix(prefix, "language", model.text_features), model_seed + 1)

        def loss_with(image_fn: Any) -> LossFn:
            def loss() -> torch.Tensor:
                with torch.no_grad():
                    return self._loss(strategy, model.logits_from_features(image_fn(), text()), y)

            return loss

        full = loss_with(image)
        return full, [full if g.name == "vision" else loss_with(image_at_theta_fn) for g in self.groups]

    def loss_closure(self, strategy: Any, model_seed: int = 0) -> LossFn:
        """The minibatch loss at the current θ under ``model_seed`` (tests, diagnostics)."""
        self._prepare(strategy)
        return self.closures(strategy, model_seed)[0]

    # ---- precision -------------------------------------------------------------------------------
    def probe_precision(self, model: CLIPClassifier) -> str:
        """The compute precision of every ZO evaluation: fp32 (default) or the model's (``train``)."""
        return model.precision if self.cfg.probe_precision == "train" else "fp32"

    def _probe_scope(self, model: CLIPClassifier) -> Any:
        return model.precision_scope(self.probe_precision(model))

    # ---- the ZO step ---------------------------------------------------------------------------
    def zo_lr(self, strategy: Any) -> float:
        """λ · (current lr, or zo_lr · current lr / base lr): the ZO step follows the optimizer's lr."""
        current = float(strategy.optimizer.param_groups[0]["lr"])
        if self.cfg.zo_lr is None:
            return self.cfg.mix * current
        return self.cfg.mix * self.cfg.zo_lr * (current / self.base_lr if self.base_lr else 1.0)

    def _new_step(self, model: CLIPClassifier) -> tuple[int, int]:
        """The step's (direction, model) seeds; text features cached under other randomness are dropped."""
        if model.training:
            model.invalidate_text_cache()
        seed, model_seed = (int(v) for v in torch.randint(0, 2**31 - 2, (2,), generator=self.generator))
        return seed, model_seed

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        """Draw the step's seeds; run the FO forward under the step's model randomness (class doc)."""
        self._prepare(strategy)
        self._at_theta, self._from_forward = None, False
        if not self.groups:
            return
        model: CLIPClassifier = strategy.model
        self._seeds = self._new_step(model)
        model.tower_seeds = (self._seeds[1], self._seeds[1] + 1)
        self._from_forward = self.reuse_forward and model.precision == self.probe_precision(model)
        if self._from_forward and self.prefix:
            self.prefix.record()
        if self.tape is not None:
            self.tape.clear()
            self.tape.recording = self._from_forward

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        model: CLIPClassifier = strategy.model
        image, text = model.seeded_image_features, model.seeded_text_features
        if self._from_forward and image is not None and text is not None:
            self._at_theta = (image.detach(), text.detach())
        self._end_seeded_forward(model)

    def _end_seeded_forward(self, model: CLIPClassifier) -> None:
        model.tower_seeds, model.seeded_image_features, model.seeded_text_features = None, None, None
        if self.prefix is not None:
            self.prefix.stop()
        if self.tape is not None:
            self.tape.recording = False

    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._end_seeded_forward(strategy.model)  # an interrupted iteration must not seed evaluation

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        loss = strategy.loss
        if isinstance(loss, torch.Tensor) and not loss.requires_grad:  # no FO unit: let backward() run
            strategy.loss = loss + torch.zeros((), device=loss.device, dtype=loss.dtype, requires_grad=True)

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        self._prepare(strategy)
        if not self.groups:
            return
        model: CLIPClassifier = strategy.model
        # without before_training_iteration (e.g. a hand-written loop) the step starts here
        (seed, model_seed), self._seeds = self._seeds or self._new_step(model), None
        features, from_forward = self._at_theta, self._from_forward and self._at_theta is not None
        self._at_theta, self._from_forward = None, False
        if self.tape is not None:
            self.tape.replaying = from_forward  # every ZO evaluation sees the FO forward's unit noise
        with self._probe_scope(model):
            full, per_group = self.closures(strategy, model_seed, features if from_forward else None,
                                            self.prefix if from_forward and self.prefix else None)
            loss0 = None
            if from_forward:
                logits = strategy.mb_output.detach()
                with torch.no_grad():  # stays on the device: zo_step reads its figures back once
                    loss0 = run_seeded(lambda: self._loss(strategy, logits, strategy.mb_y), model_seed).detach()
            per_tower = self.cfg.vision_perturbation == "per_tower"
            self.last = zo_step(
                self.groups, full, seed, lr=self.zo_lr(strategy), q=self.cfg.queries,
                two_sided=self.cfg.two_sided, sign_mode=self.cfg.sign, mode=self.cfg.candidate,
                rng_seed_for_model=model_seed, probe="per_group" if per_tower else "joint",
                group_loss_fns=per_group if per_tower else None, loss_at_theta=loss0,
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
            "MoZO/candidate": {"theta": 0, "minus": -1, "plus": 1, "aggressive": 2, "probe": 3}[result.candidate],
            "MoZO/fo_loss": float(strategy.loss.detach()),
        }
        for name, value in figures.items():
            strategy.evaluator.publish_metric_value(MetricValue(self, name, value, x))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "base_lr": self.base_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.base_lr = state.get("base_lr", self.base_lr)
