"""The ZSCL trainer's options (:class:`ZSCLConfig`) and the family's presets (docs/methods/zscl.md).

One trainer, the terms composable: distillation (teacher, reference images, reference texts,
temperature, image / text weights), weight consolidation (``l2``), weight ensemble (``we_every``),
WiSE merge (``wise_alpha``) and iCaRL's memory (``ref_images: memory``). Each family member is a preset:
:data:`PRESETS` maps its name to the options it sets, each with its source in the authors' code
(Thunderbeee/ZSCL @ b96e714), and :func:`preset_config` makes a config dataclass per preset whose field
defaults are the preset's values (so ``python -m runs list`` and YAML see them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..options import COUNT, NONNEGATIVE, POSITIVE, UNIT_INTERVAL, option

Teacher = Literal["none", "pretrained", "previous"]
RefImages = Literal["reference", "current", "memory"]
RefTexts = Literal["captions", "current", "virtual"]


@dataclass
class ReferenceConfig:
    images: str | None = option(None,
        "ImageFolder-style directory of reference images (MTIL: ImageNet train; CIL: CC images); relative: "
        "to the working directory")
    captions: str | None = option(None,
        "captions file in Conceptual Captions' TSV format (caption<TAB>url per line; MTIL/CIL: CC validation "
        "captions); relative: to the working directory")


@dataclass
class ZSCLConfig:
    teacher: Teacher = option("none",
        "distillation teacher: none (no distillation), pretrained (the model before the first task, ZSCL), "
        "previous (the model at the start of each task, LwF)")
    ref_images: RefImages = option("reference",
        "distillation images: reference (reference.images), current (the task's training images), memory (iCaRL)")
    ref_texts: RefTexts = option("captions",
        "distillation texts: captions (reference.captions), current (the task's class prompts), virtual (LwF-VR)")
    temperature: float = option(2.0, "distillation temperature T (loss scaled by T²)", range=POSITIVE)
    image_weight: float = option(0.0, "weight of the image-side distillation (softmax over texts)", range=NONNEGATIVE)
    text_weight: float = option(0.0, "weight of the text-side distillation (transposed logits)", range=NONNEGATIVE)
    l2: float = option(0.0, "weight consolidation: weight of Σ(θ − θ_start-of-task)² (a sum)", range=NONNEGATIVE)
    we_every: int | None = option(None,
        "weight ensemble: add the weights to a running uniform average every this many iterations; None: off",
        range=COUNT)
    wise_alpha: float | None = option(None,
        "WiSE-FT after each task: θ ← α θ + (1 − α) θ_start-of-task; None: off", range=UNIT_INTERVAL)
    memory_size: int = option(10000, "iCaRL: images kept over all past tasks (ref_images: memory)", range=COUNT)
    herding_pool: int = option(30000, "iCaRL: first training images of a task ranked by herding", range=COUNT)
    virtual_size: int = option(1000, "LwF-VR: random token sequences in the virtual vocabulary", range=COUNT)
    virtual_length: int = option(10, "LwF-VR: random tokens per sequence", range=COUNT)
    reference_batch_size: int | None = option(None, "reference images per step; None: train.batch_size",
                                              range=COUNT)
    reference: ReferenceConfig = option(default_factory=ReferenceConfig,
        help="where the reference data is (ref_images: reference / ref_texts: captions)")

    @property
    def distills(self) -> bool:
        """Whether any distillation term is on (a teacher and a positive weight)."""
        return self.teacher != "none" and (self.image_weight > 0 or self.text_weight > 0)

    @property
    def reads_reference_data(self) -> bool:
        """Whether it distils on data from outside the stream (``reference.images`` / ``reference.captions``)."""
        return self.distills and (self.ref_images == "reference" or self.ref_texts == "captions")

    def machine_problems(self, run: Any = None) -> list[str]:
        """What keeps the reference data from being read here (``runs.machine`` calls it before any work)."""
        from .reference import reference_problems

        return reference_problems(self)


# ---- presets --------------------------------------------------------------------------------------
# name -> (options, source of each). Sources: Thunderbeee/ZSCL @ b96e714, mtil/scripts/*.sh and mtil/src.
DISTILL = {"image_weight": 1.0, "text_weight": 1.0}
PRESETS: dict[str, dict[str, Any]] = {
    "continual-ft": {},  # finetune.sh: --method finetune, no term
    "zscl": {"teacher": "pretrained", "ref_images": "reference", "ref_texts": "captions", **DISTILL,
             "l2": 1.0, "we_every": 100},  # ZSCL.sh l.18-25
    "zscl-cil": {"teacher": "pretrained", "ref_images": "reference", "ref_texts": "captions",
                 "image_weight": 5.0, "text_weight": 5.0, "we_every": 10},  # cil models.py l.268, configs *-ZSCL.yaml
    # lwf.sh l.18-22, 39-40
    "lwf-clip": {"teacher": "previous", "ref_images": "current", "ref_texts": "current", **DISTILL},
    # lwf_vr.sh l.18-23, 39-41
    "lwf-vr": {"teacher": "previous", "ref_images": "current", "ref_texts": "virtual", **DISTILL},
    "wise-ft": {"wise_alpha": 0.8},  # WiSE_finetune.sh l.19-21
    "wc": {"l2": 1.0},  # wc.sh l.19
    "we": {"we_every": 100},  # we.sh passes --swa (unknown to args.py): ZSCL.sh l.21-22's --we --avg_freq 100
    "icarl-clip": {"teacher": "pretrained", "ref_images": "memory", "ref_texts": "current", **DISTILL},  # icarl.py
}
PRESET_HELP = {
    "continual-ft": "Continual-FT: the trainer with no term (full fine-tuning task after task)",
    "zscl": "ZSCL (ICCV 2023): distillation from pretrained CLIP on reference images/captions, L2, WE",
    "zscl-cil": "ZSCL's class-incremental recipe: CC images + captions, weights 5/5, WE every 10, no L2",
    "lwf-clip": "LwF (CLIP): distillation from the previous model on the task's images and class prompts",
    "lwf-vr": "LwF-VR: LwF with a virtual vocabulary of random token sequences as texts",
    "wise-ft": "WiSE-FT: Continual-FT, then θ ← 0.8 θ + 0.2 θ_previous after each task",
    "wc": "WC: Continual-FT + Σ(θ − θ_start)²",
    "we": "WE: Continual-FT + running weight average every 100 iterations",
    "icarl-clip": "iCaRL (CLIP): distillation from pretrained CLIP on a 10,000-image herded memory",
}


def preset_config(name: str) -> type:
    """A :class:`ZSCLConfig` subclass whose defaults are preset ``name``'s options (help and range kept)."""
    overrides = PRESETS[name]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ZSCLConfig)})
    if unknown:
        raise ValueError(f"preset {name}: unknown options {unknown}")
    fields = []
    for f in dataclasses.fields(ZSCLConfig):
        if f.name in overrides:
            fields.append((f.name, f.type, dataclasses.field(default=overrides[f.name], metadata=f.metadata)))
    cls_name = "".join(part.capitalize() for part in name.replace("-", " ").split()) + "Config"
    cls = dataclasses.make_dataclass(cls_name, fields, bases=(ZSCLConfig,))
    cls.__module__ = __name__
    cls.__doc__ = PRESET_HELP[name]
    return cls


PRESET_CONFIGS: dict[str, type] = {name: preset_config(name) for name in PRESETS}


def check_config(cfg: ZSCLConfig) -> None:
    """Cross-field checks of the options alone; ValueError naming the field."""
    if cfg.teacher != "none" and not cfg.image_weight and not cfg.text_weight:
        raise ValueError(f"method.teacher = {cfg.teacher}: no distillation weight is positive; allowed: "
                         f"method.image_weight > 0 or method.text_weight > 0, or method.teacher: none")
    if cfg.teacher == "none" and (cfg.image_weight or cfg.text_weight):
        raise ValueError("method.image_weight / method.text_weight > 0 need a teacher; allowed: method.teacher: "
                         "pretrained or previous")
    needs = [(cfg.distills and cfg.ref_images == "reference", "images", "ref_images: reference"),
             (cfg.distills and cfg.ref_texts == "captions", "captions", "ref_texts: captions")]
    for needed, key, why in needs:
        if needed and getattr(cfg.reference, key) is None:
            raise ValueError(f"method.reference.{key} = null: {why} reads it; allowed: a path (docs/methods/zscl.md"
                             f"#reference-data), or another method.{why.split(':')[0]}")


def check_run(run: Any) -> None:
    """``MethodSpec.check``: :func:`check_config` on the run's options (data presence: ``runs.machine``)."""
    check_config(run.method.cfg)
