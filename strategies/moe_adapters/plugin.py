"""MoE-Adapters' plugin: the method's hooks on any ``SupervisedTemplate`` (docs/methods/moe_adapters.md).

Training is plain first-order training of the MoE units (:class:`~strategies.clip.units.MoEAdapter`);
the plugin only decides, per task, which parts of them train and what is kept:

- **router bank** (``routers: per_task``): before task t's optimizer is built
  (``before_train_dataset_adaptation``) every unit routes with router t, and only router t of the bank
  requires gradients (the others are not in the graph either); ``shared``: router 0 always.
- **activate-freeze** (``freeze_top: k``): during task t each unit counts the experts its gates choose
  (``MoEAdapter.counts``); after the task the k most chosen per unit join the frozen set
  (:func:`~.freeze.grow_frozen`), whose experts no longer require gradients (so they leave the optimizer).
- **DDAS** (``ddas.enabled``): a frozen AlexNet and one autoencoder per domain (domain 0 "like
  pre-training" before the first task, then one per task after it; :mod:`.ddas`). At evaluation
  :meth:`MoEAdaptersPlugin.deliver` scores a minibatch: each image (``routing: sample``) or the batch
  (``routing: batch``) goes to the domain whose autoencoder reconstructs it best; domain 0 or an error
  above the threshold → frozen CLIP (units off), else the units with that task's router, image and text
  towers alike, as the official ``evaluation.py``.

State across experiences (:meth:`state_dict`, tensors and plain values): frozen masks, the last task's
counts, the autoencoders, the data-order generator. The router bank itself is model parameters
(checkpointed with the units); it must exist before a checkpoint is loaded, so the strategy grows it at
construction (:meth:`MoEAdaptersPlugin.prepare`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..clip import MASKED_LOGIT, CLIPClassifier
from ..clip.units import MoEAdapter, UnitKey
from ..cost import tensor_bytes
from .config import MoEAdaptersConfig
from .ddas import (
    FROZEN,
    Autoencoder,
    autoencoder_lr,
    choose_routes,
    ddas_features,
    reconstruction_errors,
    reconstruction_loss,
)
from .freeze import grow_frozen

log = logging.getLogger(__name__)
Route = int | None  # a task's router, or None: units off (frozen CLIP)


def unit_name(key: UnitKey) -> str:
    return f"{key[0]}.{key[1]}"


def moe_units(model: CLIPClassifier) -> dict[UnitKey, MoEAdapter]:
    """The model's MoE units by (branch, layer); TypeError when it has none or other kinds."""
    units = getattr(model, "units", None)
    if not isinstance(units, dict) or not units or not all(isinstance(u, MoEAdapter) for u in units.values()):
        raise TypeError("MoE-Adapters needs a CLIPClassifier with MoE units (model.units.kind: moe)")
    return units


@contextmanager
def routed(units: dict[UnitKey, MoEAdapter], route: Route) -> Iterator[None]:
    """Every unit routes with ``route`` (None: off) inside the block; the previous routes after it."""
    previous = {key: unit.route for key, unit in units.items()}
    for unit in units.values():
        unit.route = route
    try:
        yield
    finally:
        for key, unit in units.items():
            unit.route = previous[key]


class _Images(Dataset):
    """Images of an ``ImageFileDataset`` through ``transform`` (domain 0)."""

    def __init__(self, files: Any, transform: Any) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.files[index]
        return self.transform(image), target


class MoEAdaptersPlugin(SupervisedPlugin):
    """MoE-Adapters on any template: router per task, activate-freeze, DDAS (module docstring).

    ``MoEAdaptersPlugin(cfg, seed=0, data_root="data", download=False)``; ``data_root`` / ``download`` are
    where DDAS's domain-0 images (TinyImageNet) are read. Call :meth:`prepare` (model, number of tasks)
    before building the optimizer when ``routers: per_task``.
    """

    def __init__(self, cfg: MoEAdaptersConfig | None = None, *, seed: int = 0, data_root: str = "data",
                 download: bool = False) -> None:
        super().__init__()
        self.cfg = cfg or MoEAdaptersConfig()
        self.generator = torch.Generator().manual_seed(seed)
        self.data_root, self.download = data_root, download
        self.units: dict[UnitKey, MoEAdapter] = {}
        self.frozen: dict[str, torch.Tensor] = {}  # unit name -> (E,) bool
        self.last_counts: dict[str, torch.Tensor] = {}  # unit name -> (E,) int64, the last task's
        self.tasks_trained = 0
        self.autoencoders = nn.ModuleList()  # [domain 0,] task 0, task 1, ...
        self.domain0_trained = False
        self.ae_losses: dict[str, torch.Tensor] = {}  # autoencoder -> its training losses (not checkpointed)
        self.extractor: nn.Module | None = None
        self._text_cache: dict[tuple[Any, ...], torch.Tensor] = {}

    # ---- set-up ----------------------------------------------------------------------------------
    @property
    def has_domain0(self) -> bool:
        return self.cfg.ddas.enabled and self.cfg.ddas.domain0 != "none"

    def prepare(self, model: CLIPClassifier, tasks: int | None = None) -> None:
        """Attach to ``model``'s MoE units; with ``routers: per_task`` grow each unit's bank to ``tasks``."""
        self.units = moe_units(model)
        if self.cfg.routers == "per_task" and tasks:
            for unit in self.units.values():
                unit.add_routers(tasks)

    def _route_for_training(self, task: int) -> int:
        return task if self.cfg.routers == "per_task" else 0

    def _eval_route(self) -> int:
        """Without DDAS: the last trained task's router (official behaviour without the selector)."""
        return max(self.tasks_trained - 1, 0) if self.cfg.routers == "per_task" else 0

    def configure_training(self, task: int) -> None:
        """Task ``task``'s trainable parts: its router, the experts outside the frozen set; fresh counts."""
        route = self._route_for_training(task)
        for key, unit in self.units.items():
            unit.add_routers(route + 1)
            unit.route = route
            unit.sparse = self.cfg.sparse_dispatch and unit.top_k < len(unit.experts)
            for index in range(unit.n_routers):
                for matrix in unit.router(index):
                    matrix.requires_grad_(index == route)
            frozen = self.frozen.get(unit_name(key))
            for e, expert in enumerate(unit.experts):
                expert.requires_grad_(frozen is None or not bool(frozen[e]))
            experts = len(unit.experts)
            unit.counts = torch.zeros(experts, dtype=torch.int64, device=unit.w_gate.device) \
                if self.cfg.freeze_top else None

    # ---- training --------------------------------------------------------------------------------
    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        if not self.units:
            self.prepare(strategy.model)
        if self.has_domain0 and not self.domain0_trained:
            self._train_domain0(strategy)

    def before_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        # before Avalanche builds the optimizer (check_model_and_optimizer) and RecipePlugin keeps the
        # parameters that require gradients
        if not self.units:
            self.prepare(strategy.model)
        self.configure_training(strategy.experience.current_experience)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        task = strategy.experience.current_experience
        if self.cfg.freeze_top:
            self._freeze_most_chosen()
        if self.cfg.ddas.enabled:
            self._train_task_autoencoder(strategy, task)
        self.tasks_trained = max(self.tasks_trained, task + 1)

    def _freeze_most_chosen(self) -> None:
        for key, unit in self.units.items():
            name = unit_name(key)
            counts = unit.counts if unit.counts is not None else torch.zeros(len(unit.experts), dtype=torch.int64)
            counts = counts.detach().cpu()
            previous = self.frozen.get(name, torch.zeros(len(unit.experts), dtype=torch.bool))
            self.frozen[name] = grow_frozen(previous, counts, self.cfg.freeze_top)
            self.last_counts[name] = counts
            unit.counts = None

    # ---- DDAS: autoencoders ----------------------------------------------------------------------
    def feature_extractor(self, device: torch.device) -> nn.Module:
        if self.extractor is None:
            from .alexnet import build_feature_extractor

            self.extractor = build_feature_extractor(self.cfg.ddas.pretrained, device)
        return self.extractor.to(device)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        extractor = self.feature_extractor(images.device)
        return ddas_features(extractor, images, self.cfg.ddas.image_size)

    def _new_autoencoder(self, device: torch.device) -> Autoencoder:
        size = self.cfg.ddas.image_size
        dims = int(torch.tensor(self._feature_shape(size, device)).prod())
        return Autoencoder(dims, self.cfg.ddas.code_dims).to(device)

    def _feature_shape(self, size: int, device: torch.device) -> tuple[int, ...]:
        with torch.no_grad():
            out = self.feature_extractor(device)(torch.zeros(1, 3, size, size, device=device))
        return tuple(out.shape[1:])

    def fit_autoencoder(self, loader: DataLoader, iterations: int, device: torch.device) -> Autoencoder:
        """Train a new autoencoder on the DDAS features of ``loader``'s images (official schedule); its
        losses are kept in :attr:`ae_losses` under its index."""
        ddas = self.cfg.ddas
        autoencoder = self._new_autoencoder(device)
        optimizer = torch.optim.Adam(autoencoder.parameters(), lr=ddas.lr, weight_decay=ddas.weight_decay)
        batches, losses, batch_iter = len(loader), [], iter(loader)
        for step in range(iterations):
            if step % batches == 0:
                batch_iter = iter(loader)
            images = next(batch_iter)[0].to(device)
            for group in optimizer.param_groups:
                group["lr"] = autoencoder_lr(step, batches, ddas.lr, ddas.lr_decay, ddas.lr_decay_epochs)
            loss = reconstruction_loss(autoencoder, self._features(images))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        self.ae_losses[str(len(self.autoencoders))] = torch.stack(losses).cpu()
        return autoencoder.eval().requires_grad_(False)

    def _loader(self, dataset: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.ddas.batch_size, shuffle=True, generator=self.generator,
                          num_workers=0, drop_last=False)

    def _train_domain0(self, strategy: Any) -> None:
        dataset = domain0_dataset(strategy.model, self.data_root, self.download, self.cfg.ddas.domain0_per_class)
        log.info("MoE-Adapters DDAS: domain-0 autoencoder on %d TinyImageNet images", len(dataset))  # type: ignore[arg-type]
        self.autoencoders.insert(0, self.fit_autoencoder(self._loader(dataset), self.cfg.ddas.domain0_iterations,
                                                         strategy.device))
        self.domain0_trained = True

    def _train_task_autoencoder(self, strategy: Any, task: int) -> None:
        expected = task + (1 if self.has_domain0 else 0)
        if len(self.autoencoders) != expected:
            raise RuntimeError(f"MoE-Adapters DDAS: task {task} needs {expected} autoencoders before its own, "
                               f"found {len(self.autoencoders)} (experiences must be trained in order)")
        dataset = strategy.experience.dataset.train()
        self.autoencoders.append(self.fit_autoencoder(self._loader(dataset), self.cfg.ddas.iterations,
                                                      strategy.device))

    # ---- evaluation ------------------------------------------------------------------------------
    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        if not self.units:
            self.prepare(strategy.model)
        self._text_cache.clear()
        for unit in self.units.values():
            unit.route = self._eval_route()
        strategy.model.invalidate_text_cache()

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._text_cache.clear()
        strategy.model.invalidate_text_cache()

    def routes(self, images: torch.Tensor) -> torch.Tensor:
        """DDAS's route per image, (B,) int64: a task index or :data:`~.ddas.FROZEN`."""
        if len(self.autoencoders) == 0:
            return torch.full((images.shape[0],), FROZEN, dtype=torch.int64, device=images.device)
        errors = reconstruction_errors(list(self.autoencoders), self._features(images))  # (B, A)
        return choose_routes(errors, self.cfg.ddas.threshold, self.cfg.ddas.routing, self.has_domain0)

    def text_features(self, model: CLIPClassifier, route: Route) -> torch.Tensor:
        """Text features of the active classes with the units routed by ``route`` (cached per eval)."""
        key = (route, model.precision, model.prompt_set, tuple(model.active_classes))
        if key not in self._text_cache:
            with routed(self.units, route), torch.no_grad():
                model.invalidate_text_cache()
                self._text_cache[key] = model.text_features()
            model.invalidate_text_cache()
        return self._text_cache[key]

    def deliver(self, model: CLIPClassifier, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` (B, K): each group of images with one route scored by its units (module
        docstring); frozen CLIP's logits for route :data:`~.ddas.FROZEN`."""
        if not self.units:
            self.prepare(model)
        routes = self.routes(images)
        logits = torch.full((images.shape[0], len(model.class_prompts)), MASKED_LOGIT, device=images.device)
        for value in routes.unique().tolist():
            route: Route = None if value == FROZEN else int(value)
            rows = (routes == value).nonzero().squeeze(1)
            with routed(self.units, route):
                image = model.encode_image(images[rows])
            logits = logits.index_copy(0, rows, model.logits_from_features(image, self.text_features(model, route)))
        return logits

    # ---- state and costs -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"frozen": dict(self.frozen), "last_counts": dict(self.last_counts),
                "tasks_trained": self.tasks_trained, "domain0_trained": self.domain0_trained,
                "autoencoders": [{k: v.detach().cpu() for k, v in ae.state_dict().items()}
                                 for ae in self.autoencoders],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = dict(state["frozen"])
        self.last_counts = dict(state["last_counts"])
        self.tasks_trained = int(state["tasks_trained"])
        self.domain0_trained = bool(state["domain0_trained"])
        self.autoencoders = nn.ModuleList()
        for tensors in state["autoencoders"]:
            code, dims = tensors["encoder.0.weight"].shape
            autoencoder = Autoencoder(dims, code)
            autoencoder.load_state_dict(tensors)
            device = next(iter(self.units.values())).w_gate.device if self.units else "cpu"
            self.autoencoders.append(autoencoder.to(device).eval().requires_grad_(False))
        self.generator.set_state(state["generator"])

    def extra_state(self) -> dict[str, int]:
        """Bytes of what MoE-Adapters keeps beyond the backbone and one router per unit (strategies.cost)."""
        out: dict[str, int] = {}
        if self.cfg.routers == "per_task":
            out["router_bank"] = tensor_bytes([unit.router(i) for unit in self.units.values()
                                               for i in range(1, unit.n_routers)])
        if self.cfg.freeze_top:
            out["frozen_set"] = tensor_bytes([self.frozen, self.last_counts])
        if self.cfg.ddas.enabled:
            out["autoencoders"] = tensor_bytes(self.autoencoders)
            out["ddas_feature_extractor"] = tensor_bytes(self.extractor) if self.extractor is not None else 0
        return out


def domain0_dataset(model: CLIPClassifier, data_root: str, download: bool, per_class: int | None) -> Dataset:
    """TinyImageNet's training images (the first ``per_class`` per class) through the model's evaluation
    transform: DDAS's "like pre-training" domain 0."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from benchmarks.tinyimagenet import ensure_tinyimagenet, read_tiny_classes, tiny_train_files

    folder = ensure_tinyimagenet(data_root, download)
    wnids, _ = read_tiny_classes(folder)
    transform = image_transform_v2(PreprocessCfg(**model.clip.visual.preprocess_cfg), is_train=False)
    return _Images(tiny_train_files(folder, wnids, per_class), transform)
