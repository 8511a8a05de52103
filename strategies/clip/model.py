"""The CLIP classifier every strategy trains: open_clip model + training units, frozen backbone.

Logits over the benchmark's *global* class ids are ``logit_scale.exp() · cos(f_img(x), f_txt(k))``
where the text feature of class ``k`` is the normalised mean of its normalised prompt embeddings.
Only the *active* classes (set by the label-space plugin per experience) are scored; the others get
``MASKED_LOGIT``, so Avalanche's accuracy and cross-entropy work on global targets unchanged. A
large finite value is used instead of ``-inf`` so that losses over masked columns (LwF's
distillation, label smoothing) stay finite.

Two prompt sets per class: ``train`` (what the training loss scores, e.g. the dataset's first
template) and ``eval`` (evaluation and prototypes, e.g. every template), switched by the
label-space plugin before each training / evaluation experience (:meth:`CLIPClassifier.use_prompts`).

Text features are cached per compute precision, prompt set and active class set and reused while the
text side does not change: the cache is keyed by the version counters of every text-side tensor
(in-place updates by an optimizer, a zeroth-order probe or ``load_state_dict`` bump them); when
text-side parameters require gradients and autograd is on, features are recomputed every forward with
the graph.

Precision (:mod:`strategies.clip.precision`). :attr:`CLIPClassifier.precision` is the *compute*
precision: :meth:`~CLIPClassifier.encode_image`, :meth:`~CLIPClassifier.encode_text` (and so the
text features) run under ``autocast(precision, device type)`` and return float32 features; the
cosine head (:meth:`~CLIPClassifier.logits_from_features`) is float32 with autocast off, so logits,
losses and softmaxes downstream are float32. Every caller — training, evaluation, LwF's copy of the
model, ConDU's aggregation and prototypes, MoZO's probes — goes through these methods and so runs
at the same precision with no code of its own; :meth:`~CLIPClassifier.precision_scope` overrides it
for a block. ``ModelConfig.precision`` is only the frozen backbone's *storage* dtype: the model is
built in float32, the units are injected, then the frozen (``requires_grad=False``) parameters and
the floating buffers are cast (:func:`cast_frozen`); trainable tensors stay float32 (master weights),
autocast casts them on the fly. open_clip's towers handle a bf16 backbone under autocast: ``conv1``
(a convolution, autocast) takes the float32 images, class and positional embeddings are cast to the
activations' dtype before they are added, and the text tower casts its token embedding to the blocks'
weight dtype (``get_cast_dtype``); its ``LayerNorm`` computes in the input dtype and casts back
(``LayerNormFp32``, which computes in float32, is only chosen when open_clip itself is asked for
bf16/fp16, which we do not do; on CUDA autocast runs ``layer_norm`` in float32 anyway).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..options import option
from .precision import (
    autocast,
    check_compatible,
    check_precision,
    restore_tf32,
    set_tf32,
    storage_dtype,
    tf32_switches,
)
from .text import encode_text
from .units import UnitKey, UnitsConfig, inject_units, tower_modules

log = logging.getLogger(__name__)

MASKED_LOGIT = -1e4
PROMPT_SETS = ("train", "eval")  # training prompts (official: first template) / evaluation prompts (all)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable; the message says what to do."""


@dataclass
class ModelConfig:
    arch: str = option("ViT-B-16", "any open_clip model name, or a config in strategies/clip/model_configs")
    pretrained: str = option("openai", 'open_clip pretrained tag, a local weights file, or "none" (random init)')
    units: UnitsConfig = option(default_factory=UnitsConfig, help="trainable units added to the frozen CLIP")
    cache_dir: str | None = option(None, "where open_clip stores downloaded weights (None = its default)")
    precision: str = option("fp32",
        "frozen backbone's storage dtype: fp32 | bf16 | fp16 (mixed precision: train.precision)")


def register_model_configs() -> None:
    """Make the project's model configs (e.g. ``clip-tiny``) known to open_clip's factory."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def arch_depths(arch: str) -> dict[str, int]:
    """``{tower: number of transformer blocks}`` of an open_clip architecture, read from its config
    (no weights are built; a tower whose depth the config does not give is left out)."""
    import open_clip

    register_model_configs()
    cfg = open_clip.get_model_config(arch) or {}
    depths = {}
    for tower, key in (("vision", "vision_cfg"), ("language", "text_cfg")):
        layers = (cfg.get(key) or {}).get("layers")
        if isinstance(layers, int):
            depths[tower] = layers
    return depths


class CLIPClassifier(nn.Module):
    """Scores images against class-name prompts; see the module docstring for the formula."""

    def __init__(self, clip: Any, tokenizer: Any, units: dict[UnitKey, nn.Module]) -> None:
        super().__init__()
        self.clip: Any = clip  # open_clip CLIP / CustomTextCLIP (dynamic attributes)
        self.tokenizer: Any = tokenizer
        self.units = units  # plain dict (not a ModuleDict): units are already submodules of clip
        self.prompt_sets: dict[str, list[list[str]]] = {name: [] for name in PROMPT_SETS}
        self.prompt_set: str = "eval"  # which set scores classes: "train" or "eval" (use_prompts)
        self.active_classes: list[int] = []
        self.precision: str = "fp32"  # compute precision of every forward (set_precision / precision_scope)
        self.storage_precision: str = frozen_precision(clip)  # dtype of the frozen backbone (cast_frozen)
        self.grad_checkpointing = False  # recompute each residual block in backward (set_grad_checkpointing)
        self._text_cache: dict[tuple[str, str, tuple[int, ...]], torch.Tensor] = {}
        self._text_version: int | None = None
        self._text_tensors = [t for m in tower_modules(clip)["language"] for t in m.parameters()]
        for name in ("positional_embedding", "text_projection"):
            if isinstance(getattr(clip, name, None), torch.Tensor):
                self._text_tensors.append(getattr(clip, name))

    # ---- label space -------------------------------------------------------------------------
    def set_class_prompts(self, class_prompts: list[list[str]],
                          train_prompts: list[list[str]] | None = None) -> None:
        """Prompts per global class id: ``class_prompts`` for evaluation, ``train_prompts`` for training
        (default: the same); all classes become active."""
        train = class_prompts if train_prompts is None else train_prompts
        if len(train) != len(class_prompts):
            raise ValueError(f"train_prompts has {len(train)} classes but class_prompts {len(class_prompts)}")
        for name, prompts in (("class_prompts", class_prompts), ("train_prompts", train)):
            empty = [c for c, p in enumerate(prompts) if not p]
            if empty:
                raise ValueError(f"{name}: classes {empty[:5]} have no prompt")
        self.prompt_sets = {"train": train, "eval": class_prompts}
        self.active_classes = list(range(len(class_prompts)))
        self._text_cache.clear()

    @property
    def class_prompts(self) -> list[list[str]]:
        """Prompts per global class id of the prompt set in use (see :meth:`use_prompts`)."""
        return self.prompt_sets[self.prompt_set]

    def use_prompts(self, prompt_set: str) -> None:
        """Score classes with the ``"train"`` or the ``"eval"`` prompts (set by the label-space plugin)."""
        if prompt_set not in PROMPT_SETS:
            raise ValueError(f"prompt set {prompt_set!r}; allowed: {', '.join(PROMPT_SETS)}")
        self.prompt_set = prompt_set

    @contextmanager
    def using_prompts(self, prompt_set: str) -> Iterator[None]:
        """Temporarily score with another prompt set, e.g. ConDU's prototypes with the eval prompts."""
        previous = self.prompt_set
        self.use_prompts(prompt_set)
        try:
            yield
        finally:
            self.prompt_set = previous

    def set_active_classes(self, class_ids: list[int]) -> None:
        """Score only these global class ids; the others get ``MASKED_LOGIT``."""
        bad = [c for c in class_ids if not 0 <= c < len(self.class_prompts)]
        if bad:
            raise ValueError(f"class ids {bad[:5]} outside 0..{len(self.class_prompts) - 1}")
        self.active_classes = sorted(set(class_ids))

    # ---- precision, memory, compilation -------------------------------------------------------
    def set_precision(self, precision: str) -> None:
        """Run every forward at compute precision ``precision`` (fp32 | tf32 | bf16 | fp16).

        Also sets the *process-wide* TF32 switches (:func:`~strategies.clip.precision.set_tf32`): on
        for ``tf32``, off otherwise, so the float32 parts of any run are plain float32. ValueError
        when a bf16/fp16 frozen backbone would run without autocast (fp32/tf32).
        """
        check_precision(precision)
        check_compatible(self.storage_precision, precision)
        self.precision = precision
        set_tf32(precision == "tf32")

    @contextmanager
    def precision_scope(self, precision: str) -> Iterator[None]:
        """Temporarily run at another compute precision (e.g. ZO probes in fp32); the previous precision
        and TF32 switches are put back on exit."""
        previous, switches = self.precision, tf32_switches()
        self.set_precision(precision)
        try:
            yield
        finally:
            self.precision = previous
            restore_tf32(switches)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The context the towers run under: ``torch.autocast`` for bf16 / fp16, nothing for fp32 / tf32."""
        return autocast(self.precision, self.device.type)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block of both towers in backward instead of keeping its activations.

        open_clip's own switch: its transformers call ``torch.utils.checkpoint(..., use_reentrant=False)``
        per block. The *non-reentrant* variant is what a frozen backbone needs: the reentrant one
        gives the trainable units inside a block no gradient when the block's input does not require
        gradients (frozen embeddings below it). RNG state is preserved, so dropout and router noise
        draw the same values in the recomputation (gradients equal the plain ones; tested).
        """
        self.clip.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def compile_towers(self, **options: Any) -> None:
        """``torch.compile`` the vision tower and the text tower's transformer, in place.

        In place (``nn.Module.compile``), so parameter names and state-dict keys do not change and
        the classifier's own methods (called by plugins) stay plain Python. ``options`` go to
        ``torch.compile`` (e.g. ``backend="aot_eager"`` in tests).
        """
        self.clip.visual.compile(**options)
        tower = self.clip.text if hasattr(self.clip, "text") else self.clip
        tower.transformer.compile(**options)

    # ---- features ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features, float32 (B, D), computed at the model's precision."""
        with self.autocast():
            features = self.clip.encode_image(images)
        return F.normalize(features.float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features (not normalised) of ``tokens`` (P, context length), float32 (P, D), at the
        model's precision; run at the prompts' real length (:func:`strategies.clip.text.encode_text`)."""
        with self.autocast():
            features = encode_text(self.clip, tokens, self.device)
        return features.float()

    def _text_state_version(self) -> int:
        return sum(t._version for t in self._text_tensors)

    def _encode_prompts(self, class_ids: list[int]) -> torch.Tensor:
        prompts = [p for c in class_ids for p in self.class_prompts[c]]
        counts = torch.tensor([len(self.class_prompts[c]) for c in class_ids], device=self.device)
        tokens = self.tokenizer(prompts)  # (P, L) on the host: cut to the prompts' length there
        feats = F.normalize(self.encode_text(tokens), dim=-1)  # (P, D) float32
        owner = torch.repeat_interleave(torch.arange(len(class_ids), device=self.device), counts)  # (P,)
        mean = torch.zeros(len(class_ids), feats.shape[1], device=self.device, dtype=feats.dtype)
        mean = mean.index_add(0, owner, feats) / counts[:, None]  # (C, D)
        return F.normalize(mean, dim=-1)

    def text_features(self, class_ids: list[int] | None = None) -> torch.Tensor:
        """Normalised text features of ``class_ids`` (default: active classes), (C, D)."""
        ids = self.active_classes if class_ids is None else class_ids
        if not self.class_prompts:
            raise RuntimeError("CLIPClassifier has no class prompts: call set_class_prompts first")
        needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in self._text_tensors)
        if needs_graph:
            return self._encode_prompts(ids)
        version = self._text_state_version()
        if version != self._text_version:
            self._text_cache.clear()
            self._text_version = version
        key = (self.precision, self.prompt_set, tuple(ids))
        if key not in self._text_cache:
            with torch.no_grad():
                self._text_cache[key] = self._encode_prompts(list(ids))
        return self._text_cache[key]

    def invalidate_text_cache(self) -> None:
        """Drop cached text features (for changes that bypass version counters, e.g. ``p.data``)."""
        self._text_cache.clear()
        self._text_version = None

    def logits_from_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Global-class logits: ``scale · image @ textᵀ`` on active columns, masked elsewhere; float32
        with autocast off whatever the precision (the loss reads them). (B, K)"""
        device = image_features.device
        active = torch.tensor(self.active_classes, device=device)
        with torch.autocast(device_type=device.type, enabled=False):
            scale = self.clip.logit_scale.float().exp()
            scores = scale * image_features.float() @ text_features.float().t()  # (B, C_active)
        logits = torch.full((image_features.shape[0], len(self.class_prompts)), MASKED_LOGIT,
                            device=device, dtype=scores.dtype)
        return logits.index_copy(1, active, scores)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` (module docstring): ``logits_from_features(encode_image, text_features)``.
        A training method that needs more of a forward (towers under their own seeds, the features)
        composes these three methods itself."""
        return self.logits_from_features(self.encode_image(images), self.text_features())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def frozen_precision(clip: nn.Module) -> str:
    """The storage precision of ``clip``'s frozen parameters: bf16 / fp16 if any is, else fp32."""
    dtypes = {p.dtype for p in clip.parameters() if not p.requires_grad and p.is_floating_point()}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dtype in dtypes:
            return name
    return "fp32"


def cast_frozen(clip: nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen parameters (``requires_grad=False``, at least one dimension) and the floating
    buffers of ``clip`` to ``dtype`` in place; trainable tensors stay as they are (float32).

    Scalars stay float32: ``logit_scale`` in bf16 would move CLIP's temperature (ln 100 → exp 98.9).
    Parameters keep their identity (``p.data`` is replaced), so unit indexes and optimizers built
    later see the same objects.
    """
    if dtype is torch.float32:
        return
    for p in clip.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dim() > 0:
            p.data = p.data.to(dtype)
    for module in clip.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dim() > 0:
                setattr(module, name, buffer.to(dtype))


def build_clip(cfg: ModelConfig, device: str | torch.device = "cpu") -> tuple[CLIPClassifier, Any, Any]:
    """Create the classifier and open_clip's (train, eval) image transforms from ``cfg``."""
    import open_clip

    register_model_configs()
    known = open_clip.list_models()
    if cfg.arch not in known:
        raise ValueError(f"model.arch={cfg.arch!r} is not an open_clip model; known: "
                         f"{', '.join(known[:12])}, ... ({len(known)} in all)")
    pretrained = None if cfg.pretrained in ("none", "", None) else cfg.pretrained
    if pretrained and os.environ.get("HF_HUB_OFFLINE") == "1":
        log.info("HF_HUB_OFFLINE=1: open_clip loads %s/%s from its cache only", cfg.arch, pretrained)
    dtype = storage_dtype(cfg.precision)  # ValueError for amp / pure_* before any work
    try:
        clip, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
            cfg.arch, pretrained=pretrained, precision="fp32", device=device, cache_dir=cfg.cache_dir,
        )
    except RuntimeError as error:
        if not str(error).startswith("Failed to download"):
            raise
        raise WeightsUnavailableError(
            f"model.pretrained={cfg.pretrained!r} for model.arch={cfg.arch!r} could not be loaded ({error}). "
            f"Run once with internet access (weights are cached under model.cache_dir or the Hugging Face "
            f"cache), or set model.pretrained to a local weights file (.safetensors/.bin/.pt)."
        ) from None
    units = inject_units(clip, cfg.units)
    cast_frozen(clip, dtype)
    model = CLIPClassifier(clip, open_clip.get_tokenizer(cfg.arch), units).to(device)
    if dtype is not torch.float32:  # a low-precision backbone needs autocast: compute at its dtype
        model.precision = cfg.precision
    return model, preprocess_train, preprocess_eval


def image_size(model: CLIPClassifier) -> int:
    """The model's square input resolution."""
    size = model.clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
