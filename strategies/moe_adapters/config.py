"""MoE-Adapters' options (:class:`MoEAdaptersConfig`, with DDAS's in :class:`DDASConfig`) and its checks on a
suite run (docs/methods/moe_adapters.md).

Each field carries its help text and allowed range (:mod:`strategies.options`). The defaults are the
class-incremental recipe (``cil/``: one router shared by every task, no freezing, no task selector); the MTIL
recipe (``mtil/``) is ``routers: per_task``, ``freeze_top: 2`` and ``ddas.enabled: true`` with 22 experts
(``model.units.experts``). :func:`check_run` is the method's ``MethodSpec.check``; :meth:`MoEAdaptersConfig.
machine_problems` is what keeps a run from starting on this machine (the AlexNet weights, read by
:func:`runs.machine.check_machine`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..options import COUNT, NONNEGATIVE, POSITIVE, UNIT_INTERVAL, option

ROUTERS: tuple[str, ...] = ("shared", "per_task")
ROUTINGS: tuple[str, ...] = ("sample", "batch")
ALEXNET_WEIGHTS: tuple[str, ...] = ("imagenet", "none")
DOMAIN0: tuple[str, ...] = ("tinyimagenet", "none")


@dataclass
class DDASConfig:
    enabled: bool = option(False, "the autoencoder task selector (MTIL); off: the last trained router evaluates")
    routing: Literal["sample", "batch"] = option("sample",
        "sample: each test image picks its domain; batch: one pick per test batch (official; near an oracle "
        "when batches hold one dataset)")
    threshold: float = option(0.0655, "reconstruction error above which frozen CLIP answers", range=POSITIVE)
    pretrained: Literal["imagenet", "none"] = option("imagenet",
        "AlexNet weights: torchvision's ImageNet download (cached), or none = random (tests, tiny suites)")
    domain0: Literal["tinyimagenet", "none"] = option("tinyimagenet",
        "the 'like pre-training' domain 0 (answered by frozen CLIP): TinyImageNet's training images, or none")
    domain0_per_class: int | None = option(None,
        "domain 0: the first k training images per class (None: all)", range=COUNT)
    domain0_iterations: int = option(1000, "Adam steps of the domain-0 autoencoder (official: 1000)", range=COUNT)
    iterations: int = option(300, "Adam steps of each task's autoencoder (official: 300)", range=COUNT)
    batch_size: int = option(64, "autoencoder training minibatch", range=COUNT)
    lr: float = option(0.01, "Adam lr, × lr_decay every lr_decay_epochs passes over the data", range=POSITIVE)
    lr_decay: float = option(0.1, "lr factor per lr_decay_epochs epochs", range=UNIT_INTERVAL)
    lr_decay_epochs: int = option(10, "epochs between lr decays", range=COUNT)
    weight_decay: float = option(1e-4, "Adam L2 weight decay", range=NONNEGATIVE)
    code_dims: int = option(100, "autoencoder code width (input: AlexNet's 256×13×13 conv5 map)", range=COUNT)
    image_size: int = option(224, "AlexNet input side; other inputs are resized (bilinear)", range=COUNT)

    def __post_init__(self) -> None:
        for name, allowed in (("routing", ROUTINGS), ("pretrained", ALEXNET_WEIGHTS), ("domain0", DOMAIN0)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"method.ddas.{name} = {getattr(self, name)!r}; allowed: {', '.join(allowed)}")


@dataclass
class MoEAdaptersConfig:
    routers: Literal["shared", "per_task"] = option("shared",
        "shared: one router (CIL); per_task: one router and noise matrix per task, the task's in training (MTIL)")
    freeze_top: int = option(0,
        "activate-freeze: after each task, the k most chosen experts per block and tower stop training "
        "(MTIL: 2; 0: off)", range=NONNEGATIVE)
    sparse_dispatch: bool = option(True,
        "with top_k < experts, each expert runs on the samples that chose it (official; unchosen experts "
        "get no gradient)")
    ddas: DDASConfig = option(default_factory=DDASConfig, help="distribution discriminative auto-selector (MTIL)")

    def __post_init__(self) -> None:
        if isinstance(self.ddas, dict):  # dataclasses.asdict gives the nested config as a dict
            self.ddas = DDASConfig(**self.ddas)
        if self.routers not in ROUTERS:
            raise ValueError(f"method.routers = {self.routers!r}; allowed: {', '.join(ROUTERS)}")
        if self.ddas.enabled and self.routers != "per_task":
            raise ValueError("method.ddas.enabled = true needs method.routers = 'per_task' (the selected domain "
                             "names the router); allowed: method.routers: per_task, or method.ddas.enabled: false")

    def machine_problems(self, run: Any = None) -> list[str]:
        """What keeps a run of this config from starting here (``runs.machine`` calls it before any work):
        AlexNet weights neither cached nor downloadable (offline: ``HF_HUB_OFFLINE=1``), domain-0 images
        absent with download off. [] when nothing."""
        if not self.ddas.enabled:
            return []
        problems = []
        if self.ddas.pretrained == "imagenet":
            from .alexnet import weights_problem

            problem = weights_problem()
            problems += [problem] if problem else []
        if self.ddas.domain0 == "tinyimagenet" and run is not None and not run.download:
            import os

            folder = os.path.join(run.data_root, "tiny-imagenet-200")
            if not os.path.isfile(os.path.join(folder, "wnids.txt")):
                problems.append(f"method.ddas.domain0 = 'tinyimagenet': no TinyImageNet at {folder} and download "
                                f"is off; see `python -m runs data check split_tinyimagenet --data-root "
                                f"{run.data_root}`, or method.ddas.domain0: none")
        return problems


CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MoEAdaptersConfig))


def check_run(run: Any) -> None:
    """MoE-Adapters' facts about a suite run known before any work; ``ValueError`` naming the field.

    ``run`` is a ``runs.config.RunConfig`` (``run.method.cfg`` a :class:`MoEAdaptersConfig`).
    """
    cfg: MoEAdaptersConfig = run.method.cfg
    units = run.model.units
    if units.kind != "moe":
        raise ValueError(f"model.units.kind = {units.kind!r}: MoE-Adapters trains mixture-of-adapters units; "
                         f"allowed: model.units.kind: moe")
    if cfg.freeze_top > units.experts:
        raise ValueError(f"method.freeze_top = {cfg.freeze_top}: more than model.units.experts = {units.experts}; "
                         f"allowed: 0..{units.experts}")
    if cfg.ddas.enabled and cfg.ddas.pretrained == "none" and getattr(run, "reference", None):
        raise ValueError(f"method.ddas.pretrained = 'none' (a random AlexNet) cannot be compared with the "
                         f"published row {run.reference!r}; allowed: method.ddas.pretrained: imagenet, or no "
                         f"reference")
