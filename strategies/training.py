"""What every strategy shares: the training recipe config and the plugins that apply it.

- :class:`LabelSpacePlugin` sets the classifier's active classes and prompt set (training or
  evaluation prompts) per experience, from the Avalanche experience (DESIGN: one label space for
  every protocol).
- :func:`make_criterion` / :class:`ActiveClassCrossEntropy`: the loss over the active classes only.
- :class:`RecipePlugin` restricts the optimizer to trainable parameters, resets its state per
  experience, applies warm-up + cosine learning-rate schedule per iteration, and stops an
  experience after ``iterations`` steps when the recipe counts iterations instead of epochs.
- :class:`GradScalerPlugin`: fp16's loss scaling, with skipped steps on non-finite gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from benchmarks.base import CLIPBenchmark

from .clip import MASKED_LOGIT, CLIPClassifier
from .options import COUNT, FRACTION, NONNEGATIVE, POSITIVE, option

LABEL_SPACES = ("current", "seen")  # training label spaces of LabelSpacePlugin
PROTOCOLS = ("auto", "seen", "task")  # evaluation label spaces: by task labels / classes seen so far / own


@dataclass
class TrainConfig:
    epochs: int = option(1, "passes over each experience's training set (ignored when iterations is set)", range=COUNT)
    iterations: int | None = option(None, "exact optimizer steps per experience (ConDU's recipe: 1000)", range=COUNT)
    batch_size: int = option(32, "training minibatch size", range=COUNT)
    eval_batch_size: int = option(64, "evaluation minibatch size", range=COUNT)
    optimizer: Literal["adamw", "sgd"] = option("adamw", "first-order optimizer of trainable parameters")
    lr: float = option(1e-3, "peak learning rate", range=POSITIVE)
    lr_by_experience: dict[str, float] = option(default_factory=dict,
        help="experience name -> peak lr (MTIL)", range=POSITIVE)
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW) / L2 (SGD)", range=NONNEGATIVE)
    momentum: float = option(0.9, "SGD momentum", range=FRACTION)
    warmup: int = option(30, "linear warm-up iterations at the start of every experience")
    schedule: Literal["cosine", "constant"] = option("cosine", "learning rate after warm-up")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing (ConDU uses 0.2)", range=FRACTION)
    label_space: Literal["auto", "current", "seen"] = option("auto", "classes scored in training; auto: per method")
    augment: bool = option(False, "train with open_clip's training transform instead of the eval transform")
    num_workers: int = option(0, "DataLoader workers")
    device: str = option("auto", '"auto" (cuda if available), "cpu", "cuda", "cuda:1", ...')
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp16"] = option("auto",
        "compute; auto: bf16 on CUDA, else fp32")
    grad_checkpointing: bool = option(False,
        "recompute each tower block in backward (less activation memory, more time)")
    compile: bool = option(False, "torch.compile the vision tower and the text transformer (inductor)")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def template_kwargs(train: TrainConfig, device: Any, plugins: list | None, evaluator: Any) -> dict[str, Any]:
    """The ``SupervisedTemplate`` keywords every method builder passes: minibatch sizes and epochs from
    the recipe, the run's device, plugins and evaluator, and no periodic evaluation (``eval_every=-1``:
    the runner evaluates after each experience)."""
    return dict(train_mb_size=train.batch_size, train_epochs=train.epochs, eval_mb_size=train.eval_batch_size,
                device=device, plugins=plugins, evaluator=evaluator, eval_every=-1)


def make_optimizer(model: CLIPClassifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Optimizer over the model's trainable parameters (the frozen backbone is left out)."""
    params = model.trainable_parameters() or [torch.nn.Parameter(torch.zeros(1))]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class ActiveClassCrossEntropy(torch.nn.Module):
    """Cross-entropy with label smoothing over the *active* classes only.

    The classifier scores global class ids and gives inactive ones ``MASKED_LOGIT``. Plain
    ``CrossEntropyLoss(label_smoothing=ε)`` spreads ε over every column, masked ones included, and
    its value is then dominated by ε·(−MASKED_LOGIT)/K (≈1,333 on 6 classes). Here the columns that
    are masked in every row are dropped and the targets re-indexed into the active set ``A``:

        L = (1 − ε)·(−log p_y) − ε/|A| · Σ_{k∈A} log p_k,   p = softmax over A only

    (label smoothing, Szegedy et al. 2016 §7; ConDU's code smooths over the dataset's own classes,
    condu.md "Per task"). With every column active it is ``F.cross_entropy`` unchanged; with ε = 0 it
    equals plain cross-entropy up to e^MASKED_LOGIT.

    Computed without reading anything back to the host: a log-softmax over every column (the masked
    ones contribute exactly 0 to the normaliser) and the smoothing term as a mask-weighted mean. A
    target in a masked column raises on CPU tensors; on an accelerator that check would be a host
    synchronisation per loss (MoZO evaluates the loss 4–6 times per step), so it is skipped there —
    :class:`LabelSpacePlugin` builds every training label space from the experience's own classes,
    so it cannot happen through it (a masked target would show as a loss near −MASKED_LOGIT).
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # (K,) columns scored in some row; a NaN column counts as active, so a diverged model yields a
        # non-finite loss (reported as divergence by runs.guards) instead of a label-space error
        active = ~(logits <= MASKED_LOGIT / 2).all(dim=0)
        if logits.device.type == "cpu":  # free here; on an accelerator a host read per loss (class doc)
            self._check_targets(active, targets)
        # softmax over every column = softmax over A: exp(MASKED_LOGIT − max) is exactly 0 in float32
        logp = F.log_softmax(logits, dim=1)  # (B, K)
        nll = -logp.gather(1, targets[:, None]).squeeze(1)  # (B,)
        if not self.label_smoothing:
            return nll.mean()
        smooth = -(logp * active).sum(dim=1) / active.sum()  # (B,) mean of −log p_k over k ∈ A
        return ((1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth).mean()

    @staticmethod
    def _check_targets(active: torch.Tensor, targets: torch.Tensor) -> None:
        if bool(active.all()):
            return
        masked = sorted({int(t) for t in targets[~active[targets]].tolist()})
        if masked:
            raise ValueError(f"cross-entropy: targets {masked[:5]} are masked (inactive) classes; the label "
                             f"space must contain every training target: with replayed or distilled old classes "
                             f"(e.g. Avalanche's ReplayPlugin) train over every class seen so far — in Python "
                             f'LabelSpacePlugin(train_label_space="seen"), in a suite YAML train.label_space: seen')


def make_criterion(cfg: TrainConfig) -> ActiveClassCrossEntropy:
    """The training loss of every method: cross-entropy over the active classes, ``cfg.label_smoothing``."""
    return ActiveClassCrossEntropy(cfg.label_smoothing)


def has_several_task_labels(experience: Any) -> bool:
    """Does the stream ``experience`` comes from carry more than one task label (task-incremental)?

    The ``auto`` rule of :class:`LabelSpacePlugin` and of ConDU's ``inference``; False when the
    experience does not know its stream.
    """
    stream = getattr(experience, "origin_stream", None)
    if stream is None:
        return False
    return len({label for e in stream for label in e.task_labels}) > 1


class LabelSpacePlugin(SupervisedPlugin):
    """Sets the classifier's active classes and prompt set before each training / evaluation experience.

    The classes come from what Avalanche gives, ``experience.classes_in_this_experience`` and the
    classes of the experiences trained so far, so any Avalanche benchmark whose targets index the
    model's class prompts works (``nc_benchmark`` and friends); a :class:`CLIPBenchmark` is optional.

    Training scores the current experience's classes (``current``) or every class seen so far
    (``seen``). Evaluation of experience ``j`` scores, for the ``seen`` protocol (class-incremental),
    every class seen in training so far plus experience ``j``'s own classes (so experiences not yet
    trained on are scored zero-shot over seen + their classes), and for the ``task`` protocol (MTIL,
    or ``task_aware=True``) experience ``j``'s classes only. ``protocol`` defaults to the benchmark's,
    and without a benchmark to ``auto``: ``task`` when the evaluated experience's stream carries more
    than one task label (Avalanche's ``nc_benchmark(task_labels=True)``), else ``seen`` (our choice,
    the same rule as ConDU's ``inference: auto``).

    Prompts: training uses the model's ``train`` prompt set, evaluation its ``eval`` set
    (:meth:`CLIPClassifier.use_prompts`). Given a ``benchmark``, its ``train_prompts`` and
    ``class_prompts`` (evaluation) are installed on the model the first time they are missing.
    """

    def __init__(self, benchmark: CLIPBenchmark | None = None, train_label_space: str = "current",
                 task_aware: bool = False, *, protocol: str | None = None) -> None:
        super().__init__()
        if train_label_space not in LABEL_SPACES:
            raise ValueError(f"train_label_space={train_label_space!r}; allowed: {', '.join(LABEL_SPACES)}")
        protocol = protocol or (benchmark.protocol if benchmark is not None else "auto")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r}; allowed: {', '.join(PROTOCOLS)}")
        self.benchmark = benchmark
        self.train_label_space = train_label_space
        self.protocol = "task" if task_aware else protocol
        self.seen: set[int] = set()

    def _task_protocol(self, experience: Any) -> bool:
        if self.protocol != "auto":
            return self.protocol == "task"
        return has_several_task_labels(experience)

    def _install_prompts(self, model: CLIPClassifier) -> None:
        bench = self.benchmark
        if bench is not None and not (model.prompt_sets["eval"] is bench.class_prompts
                                      and model.prompt_sets["train"] is bench.train_prompts):
            model.set_class_prompts(bench.class_prompts, train_prompts=bench.train_prompts)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        own = sorted(int(c) for c in strategy.experience.classes_in_this_experience)
        self.seen.update(own)
        self._install_prompts(strategy.model)
        strategy.model.use_prompts("train")
        strategy.model.set_active_classes(sorted(self.seen) if self.train_label_space == "seen" else own)

    def before_eval_exp(self, strategy: Any, **kwargs: Any) -> None:
        own = {int(c) for c in strategy.experience.classes_in_this_experience}
        self._install_prompts(strategy.model)
        strategy.model.use_prompts("eval")
        own_only = self._task_protocol(strategy.experience)
        strategy.model.set_active_classes(sorted(own if own_only else self.seen | own))

    def state_dict(self) -> dict[str, Any]:
        return {"seen": sorted(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = set(state["seen"])


class RecipePlugin(SupervisedPlugin):
    """Trainable-only optimizer, fresh optimizer state and LR schedule per experience, iteration cap."""

    def __init__(self, cfg: TrainConfig, experience_names: list[str] | None = None,
                 omitted_experiences: list[str] | None = None) -> None:
        """``omitted_experiences``: the stream's experiences a selection left out (``CLIPBenchmark``'s);
        ``lr_by_experience`` may name them (a shipped per-dataset table), their entries are unused."""
        super().__init__()
        self.cfg = cfg
        self.experience_names = experience_names or []
        known = [*self.experience_names, *(omitted_experiences or [])]
        unknown = sorted(set(cfg.lr_by_experience) - set(known))
        if unknown:
            raise ValueError(f"train.lr_by_experience: unknown experiences {unknown}; "
                             f"allowed: {', '.join(known)}")
        self.step = 0
        self.total = 0
        self.peak_lr = cfg.lr

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # Avalanche's make_optimizer (run just before) puts every parameter, frozen ones too, in the
        # single param group; keep the trainable ones and start each experience with fresh state.
        group = strategy.optimizer.param_groups[0]
        group["params"] = [p for p in group["params"] if p.requires_grad] or group["params"][:1]
        strategy.optimizer.state.clear()
        self.step = 0
        index = strategy.experience.current_experience
        name = self.experience_names[index] if index < len(self.experience_names) else ""
        self.peak_lr = self.cfg.lr_by_experience.get(name, self.cfg.lr)
        batches = len(strategy.dataloader)
        if batches == 0:
            raise ValueError(f"experience {strategy.experience.current_experience} has no training data")
        self.total = self.cfg.iterations or self.cfg.epochs * batches
        if self.cfg.iterations is not None:  # enough epochs to reach the cap, read by Avalanche's loop
            strategy.train_epochs = math.ceil(self.cfg.iterations / batches)

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        factor = lr_factor(self.step, self.total, self.cfg.warmup, self.cfg.schedule)
        for group in strategy.optimizer.param_groups:
            group["lr"] = self.peak_lr * factor

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.step += 1
        if self.cfg.iterations is not None and self.step >= self.cfg.iterations:
            strategy.stop_training()


class GradScalerPlugin(SupervisedPlugin):
    """Loss scaling for fp16 training (``torch.amp.GradScaler``'s public API); **put it last**.

    ``before_backward`` multiplies ``strategy.loss`` by the scale, and ``after_backward`` puts the
    unscaled loss back, so loggers, guards and other plugins read the true loss; ``before_update``
    unscales the gradients (``unscale_``) and, if any is non-finite, sets every gradient to ``None``
    so that the optimizer skips its step (the scale is then halved by ``update``); ``after_update``
    calls ``update`` and, after a skipped step, gives the parameters zero gradients back (plugins
    such as Synaptic Intelligence read ``p.grad`` after the step).

    It must scale the *complete* loss — after LwF / EWC / SI penalties and after every method
    plugin's ``before_backward`` — and unscale after every plugin that reads the gradients in
    ``before_update``, so it is the last plugin: the runner appends it to ``strategy.plugins`` after
    the strategy is built (a strategy's constructor appends its method plugin after the caller's
    plugins). Its state (the scale and growth tracker) goes into checkpoints.
    """

    def __init__(self, device: str | torch.device = "cuda", **options: Any) -> None:
        super().__init__()
        self.scaler = torch.amp.GradScaler(torch.device(device).type, **options)
        self._unscaled: torch.Tensor | None = None
        self._skipped: list[torch.Tensor] = []
        self._unscaled_step = False  # unscale_ ran this iteration, so update() has an inf check to read
        self.skipped_steps = 0  # steps skipped for non-finite gradients (since construction)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        self._unscaled = strategy.loss
        strategy.loss = self.scaler.scale(strategy.loss)

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self._unscaled is not None:
            strategy.loss, self._unscaled = self._unscaled, None

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        self._skipped = []
        grads = [p.grad for group in strategy.optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._unscaled_step = bool(grads)  # no gradient at all (e.g. every unit zeroth-order): nothing to scale
        if not grads:
            return
        self.scaler.unscale_(strategy.optimizer)
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all())  # one host sync per step
        if not finite:
            for group in strategy.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad = None
                        self._skipped.append(p)
            self.skipped_steps += 1

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        if self._unscaled_step:
            self.scaler.update()  # halves the scale after an overflow, grows it after growth_interval good steps
        self._unscaled_step = False
        for p in self._skipped:
            p.grad = torch.zeros_like(p)
        self._skipped = []

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
