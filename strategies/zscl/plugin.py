"""The ZSCL trainer's plugin: every term of the family on any ``SupervisedTemplate`` (docs/methods/zscl.md).

Per training experience:

- ``before_training_exp``: snapshot the start-of-task weights θ_start (for ``l2``, ``wise_alpha`` and the
  ``previous`` teacher, which *is* the model at the start of the task), start the weight-ensemble average
  at θ_start, build the teacher (a frozen copy of the model, eval mode), compute the teacher's reference
  text features (once per teacher: the ``pretrained`` teacher's caption features are computed once per
  run) and open the reference-image iterator (seeded per experience).
- ``before_backward``: add ``l2 · Σ(θ − θ_start)²`` and ``image_weight · L_img + text_weight · L_txt`` on one
  batch of reference images (:func:`~.maths.image_text_distillation`) to the strategy's loss. The teacher
  runs under ``torch.inference_mode`` at the student's compute precision.
- ``after_training_iteration``: after step ``i`` (0-based), when ``i % we_every == 0``, add θ to the
  running average (:func:`~.maths.we_update`), as the official loop does after its step ``i``.
- ``after_training_exp``: the official loop runs one more step, ``i = iterations``, at learning rate 0 (the
  cosine schedule's end): θ does not move, and it is averaged when ``iterations % we_every == 0`` — done
  here with the final weights. Then the model takes the average (WE), is merged with θ_start (WiSE), and
  iCaRL's memory is rebuilt with the final model. Per-task state is dropped.

Only trainable tensors are snapshot, averaged and merged (``full`` units: both towers; ``logit_scale`` is
frozen). State kept across experiences (:meth:`state_dict`): the pretrained teacher's trainable tensors and
iCaRL's memory as dataset indices, tensors only (``runs.checkpoint`` loads with ``weights_only=True``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.utils.data import DataLoader

from ..cost import tensor_bytes
from .config import PRESETS, ReferenceConfig, ZSCLConfig, check_config
from .maths import herding, image_text_distillation, l2_sum, named_clone, virtual_vocab, we_update, wise_merge
from .reference import ImageFolderImages, read_captions

log = logging.getLogger(__name__)
TEXT_CHUNK = 256  # prompts encoded per forward when computing reference text features


def eval_transform(model: Any) -> Any:
    """open_clip's evaluation transform of ``model`` (the one ``create_model_and_transforms`` returns)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**model.clip.visual.preprocess_cfg), is_train=False)


def _cycle(make: Any) -> Iterator[Tensor]:
    """Endless image batches: ``make()`` gives a fresh iterable of batches each time one is exhausted."""
    while True:
        empty = True
        for batch in make():
            empty = False
            yield batch[0] if isinstance(batch, (list, tuple)) else batch
        if empty:
            return


class ZSCLPlugin(SupervisedPlugin):
    """ZSCL and its family on any template (module docstring).

    ``ZSCLPlugin(teacher="pretrained", image_weight=1, ...)``, ``ZSCLPlugin(cfg)`` or
    ``ZSCLPlugin.from_preset("lwf-vr")``; ``seed`` seeds the reference loader and the virtual vocabulary;
    ``transform`` the reference images (default: the model's evaluation transform).
    """

    def __init__(self, cfg: ZSCLConfig | None = None, *, seed: int = 0, transform: Any = None,
                 **options: Any) -> None:
        super().__init__()
        if cfg is not None and options:
            raise TypeError("ZSCLPlugin: pass either a ZSCLConfig or keyword options, not both")
        if isinstance(options.get("reference"), dict):
            options["reference"] = ReferenceConfig(**options["reference"])
        self.cfg = cfg if cfg is not None else ZSCLConfig(**options)
        check_config(self.cfg)
        self.seed = seed
        self.transform = transform
        self.pretrained: dict[str, Tensor] | None = None  # pretrained teacher's trainable tensors, on resume
        self.memory: dict[int, Tensor] = {}  # iCaRL: train experience -> dataset indices, herding order (state)
        self.teacher: Any = None
        self.start: dict[str, Tensor] | None = None
        self.average: dict[str, Tensor] | None = None
        self.we_count = 0
        self.step = 0
        self.text_features: Tensor | None = None  # teacher's normalised reference text features (N, D)
        self._caption_cache: Tensor | None = None  # the pretrained teacher's caption features
        self._trainable_names: list[str] = []
        self._images: Iterator[Tensor] | None = None
        self.last_terms: dict[str, float] = {}
        self.held: dict[str, int] = {}  # peak bytes per kind of extra state (extra_state)

    @classmethod
    def from_preset(cls, name: str, *, seed: int = 0, transform: Any = None, **options: Any) -> ZSCLPlugin:
        """The plugin with preset ``name``'s options (:data:`~.config.PRESETS`), ``options`` on top."""
        if name not in PRESETS:
            raise ValueError(f"ZSCL preset {name!r}; allowed: {', '.join(PRESETS)}")
        return cls(seed=seed, transform=transform, **{**PRESETS[name], **options})

    # ---- helpers -------------------------------------------------------------------------------
    @staticmethod
    def trainable(model: Any) -> dict[str, Tensor]:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def _hold(self, kind: str, size: int) -> None:
        self.held[kind] = max(self.held.get(kind, 0), int(size))

    # ---- training hooks ------------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        model, experience = strategy.model, strategy.experience
        cfg = self.cfg
        self.step, self.we_count = 0, 0
        params = self.trainable(model)
        if cfg.distills and (self.teacher is None or cfg.teacher == "previous"):
            self.teacher = self._make_teacher(model)
        if cfg.teacher == "previous" and self.teacher is not None:
            teacher_params = dict(self.teacher.named_parameters())
            self.start = {name: teacher_params[name] for name in params}  # the same weights: shared
        elif cfg.l2 > 0 or cfg.wise_alpha is not None:
            self.start = named_clone(params.items())
            self._hold("zscl_start_weights", tensor_bytes(self.start))
        if cfg.we_every is not None:
            self.average = named_clone(params.items())
            self._hold("zscl_we_average", tensor_bytes(self.average))
        if cfg.distills:
            self.text_features = self._reference_texts(model, experience)
            self._images = self._reference_images(strategy, experience, int(kwargs.get("num_workers", 0)))

    def _make_teacher(self, model: Any) -> Any:
        """A frozen copy of ``model`` in eval mode; the pretrained teacher is made once (before the first
        task, or on resume from the checkpointed tensors) and kept for the run."""
        teacher = copy.deepcopy(model)
        self._trainable_names = list(self.trainable(model))
        if self.cfg.teacher == "pretrained" and self.pretrained is not None:  # resumed
            with torch.no_grad():
                for name, p in teacher.named_parameters():
                    if name in self.pretrained:
                        p.copy_(self.pretrained[name].to(p.device))
            self.pretrained = None
        teacher.requires_grad_(False)
        teacher.eval()
        self._hold("zscl_teacher", tensor_bytes(teacher))
        return teacher

    def _encode_texts(self, tokens: Tensor, model: Any) -> Tensor:
        """The teacher's normalised features of ``tokens`` (P, L) in chunks, as plain tensors. (P, D)"""
        self.teacher.precision = model.precision
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(tokens), TEXT_CHUNK):
                chunks.append(F.normalize(self.teacher.encode_text(tokens[start:start + TEXT_CHUNK]), dim=-1))
        return torch.cat(chunks).clone()  # clone outside inference mode: usable in the loss's graph

    def _reference_texts(self, model: Any, experience: Any) -> Tensor:
        cfg = self.cfg
        if cfg.ref_texts == "captions":
            if self._caption_cache is not None:
                return self._caption_cache  # the pretrained teacher's caption features: once per run
            captions = read_captions(cfg.reference.captions)  # type: ignore[arg-type]
            features = self._encode_texts(model.tokenizer(captions), model)
            if cfg.teacher == "pretrained":
                self._caption_cache = features
        elif cfg.ref_texts == "virtual":
            features = self._encode_texts(self.vocabulary(model), model)
        else:  # the task's class prompts (the training prompt set: the dataset's single template)
            classes = sorted(int(c) for c in experience.classes_in_this_experience)
            prompts = [p for c in classes for p in model.prompt_sets["train"][c]]
            features = self._encode_texts(model.tokenizer(prompts), model)
            counts = [len(model.prompt_sets["train"][c]) for c in classes]
            if any(n != 1 for n in counts):  # several prompts per class: their normalised mean, like the head
                features = F.normalize(torch.stack([f.mean(0) for f in features.split(counts)]), dim=-1)
        self._hold("zscl_reference_text_features", tensor_bytes(features))
        return features

    def vocabulary(self, model: Any) -> Tensor:
        """LwF-VR's virtual vocabulary for ``model``'s tokenizer, drawn from the seed. (virtual_size, L)"""
        tok = model.tokenizer
        gen = torch.Generator().manual_seed(self.seed)
        return virtual_vocab(self.cfg.virtual_size, self.cfg.virtual_length, int(model.clip.vocab_size),
                             int(tok.sot_token_id), int(tok.eot_token_id), int(tok.context_length), gen)

    def _reference_images(self, strategy: Any, experience: Any, num_workers: int) -> Iterator[Tensor] | None:
        cfg = self.cfg
        batch = cfg.reference_batch_size or strategy.train_mb_size
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(experience.current_experience))
        if cfg.ref_images == "memory":
            data = self._memory_dataset(experience)
            if data is None:
                return None  # first task: nothing remembered, no distillation (the official first task)
            return _cycle(lambda: DataLoader(data, batch_size=batch, shuffle=False, num_workers=num_workers))
        if cfg.ref_images == "current":
            data = experience.dataset.eval()  # the task's training images, evaluation transform (official)
        else:
            data = ImageFolderImages(cfg.reference.images, self.transform or eval_transform(strategy.model))  # type: ignore[arg-type]
        return _cycle(lambda: DataLoader(data, batch_size=batch, shuffle=True, generator=gen,
                                         num_workers=num_workers))

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        terms: dict[str, Tensor] = {}
        if self.cfg.l2 > 0:
            assert self.start is not None
            terms["l2"] = self.cfg.l2 * l2_sum(self.trainable(strategy.model), self.start)
        if self.cfg.distills and self._images is not None:
            image, text = self.distillation_terms(strategy.model, next(self._images))
            terms["image"], terms["text"] = self.cfg.image_weight * image, self.cfg.text_weight * text
        for value in terms.values():
            strategy.loss = strategy.loss + value
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()} if terms else {}

    def distillation_terms(self, model: Any, images: Tensor) -> tuple[Tensor, Tensor]:
        """(image-side, text-side) distillation of the student ``model`` on reference ``images``."""
        images = images.to(model.device)
        self.teacher.precision = model.precision
        with torch.inference_mode():
            teacher_features = self.teacher.encode_image(images)
        teacher_features = teacher_features.clone()
        student_features = model.encode_image(images)
        scale = model.clip.logit_scale.float().exp()
        assert self.text_features is not None
        return image_text_distillation(student_features, teacher_features, self.text_features, scale,
                                       self.cfg.temperature)

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        index = self.step  # the step just taken, 0-based
        self.step += 1
        if self.cfg.we_every is not None and index % self.cfg.we_every == 0:
            self._average(strategy.model)

    def _average(self, model: Any) -> None:
        assert self.average is not None
        self.we_count += 1
        we_update(self.average, self.trainable(model), self.we_count)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        model, cfg = strategy.model, self.cfg
        params = self.trainable(model)
        with torch.no_grad():
            if cfg.we_every is not None:
                if self.step % cfg.we_every == 0:  # the official lr-0 step i = iterations (module docstring)
                    self._average(model)
                assert self.average is not None
                for name, p in params.items():
                    p.copy_(self.average[name])
            if cfg.wise_alpha is not None:
                assert self.start is not None
                wise_merge(params, self.start, cfg.wise_alpha)
        model.invalidate_text_cache()
        if cfg.ref_images == "memory":
            self._update_memory(strategy, int(kwargs.get("num_workers", 0)))
        if cfg.teacher != "pretrained":
            self.teacher = None
        self.start, self.average, self.text_features, self._images = None, None, None, None

    # ---- iCaRL's memory ---------------------------------------------------------------------------
    def _memory_dataset(self, experience: Any) -> Any:
        if not self.memory:
            return None
        stream = experience.origin_stream
        parts = [stream[e].dataset.eval().subset(ix.tolist()) for e, ix in sorted(self.memory.items())]
        data = parts[0]
        for part in parts[1:]:
            data = data.concat(part)
        return data

    def _update_memory(self, strategy: Any, num_workers: int) -> None:
        """The official ``DynamicDataset``: first task its first ``memory_size`` images; then every old
        task keeps the first K // t of its list and the new one K − K // t picked by herding on the final
        model's features of its first ``herding_pool`` images (t: tasks so far)."""
        experience, k = strategy.experience, self.cfg.memory_size
        index = int(experience.current_experience)
        n = len(experience.dataset)
        if not self.memory:
            self.memory[index] = torch.arange(min(k, n))
        else:
            t = len(self.memory) + 1
            self.memory = {e: ix[: k // t] for e, ix in self.memory.items()}
            pool = torch.arange(min(self.cfg.herding_pool, n))
            features = self._features(strategy.model, experience.dataset.eval().subset(pool.tolist()),
                                      strategy.train_mb_size, num_workers)
            self.memory[index] = pool[herding(features, k - k // t)]
        self._hold("icarl_memory", self.memory_bytes(strategy.model))

    @staticmethod
    def _features(model: Any, data: Any, batch_size: int, num_workers: int) -> Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                feats = [model.encode_image(b[0].to(model.device)).cpu()
                         for b in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)]
        finally:
            model.train(was_training)
        return torch.cat(feats).clone()

    def memory_bytes(self, model: Any) -> int:
        """Bytes the exemplars take as the official code keeps them (float32 preprocessed images) plus
        their indices."""
        size = model.clip.visual.image_size
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        count = sum(len(ix) for ix in self.memory.values())
        return count * 3 * side * side * 4 + tensor_bytes(self.memory)

    # ---- state -----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, int]:
        """Peak bytes held per kind of state beyond the backbone (:mod:`strategies.cost`): the teacher
        (a whole model), the start-of-task weights (unless they are the previous-model teacher's), the
        WE average, the reference text features and iCaRL's memory."""
        return dict(self.held)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (runs.checkpoint loads with weights_only=True). Checkpoints are
        written between experiences, where only the pretrained teacher and iCaRL's memory live."""
        return {"options": {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(self.cfg)
                            if f.name != "reference"},
                "pretrained": self._pretrained_tensors(),
                "memory": {int(e): ix.cpu() for e, ix in self.memory.items()}, "held": dict(self.held)}

    def _pretrained_tensors(self) -> dict[str, Tensor] | None:
        """The pretrained teacher's tensors that training changes in the student (the rest is the backbone)."""
        if self.cfg.teacher != "pretrained":
            return None
        if self.teacher is None:
            return None if self.pretrained is None else {k: v.cpu() for k, v in self.pretrained.items()}
        params = dict(self.teacher.named_parameters())
        return {name: params[name].detach().cpu().clone() for name in self._trainable_names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher = None
        self.pretrained = state["pretrained"]
        self.memory = {int(e): ix for e, ix in state["memory"].items()}
        self.held = dict(state.get("held", {}))
        self._caption_cache = None
