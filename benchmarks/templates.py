"""Prompt templates: ``{}`` is replaced by a class name (see ``base.fill_templates``).

Every stream has two options, ``train_templates`` (the prompts the training loss scores) and
``eval_templates`` (evaluation, and ConDU's prototypes); the defaults follow the official code:

- class-incremental streams (``"default"``, ``"rich"`` or a list): MoZO's code prompts every class
  with the single template ``"a bad photo of a {}."`` (``CLASS_INCREMENTAL``) in training and
  evaluation, so both default to it; ``CLASS_INCREMENTAL_RICH`` is a larger CLIP-style ensemble
  (its first template is MoZO's) for zero-shot evaluation with several templates.
- MTIL (``"first"`` or ``"all"``): per-dataset templates in the style of CLIP's zero-shot notebook as
  used by ZSCL / WiSE-FT. ConDU's and ZSCL's code train with the **first** template of the dataset
  and evaluate / build prototypes with **all** of them (condu.md "Prompts"): ``train_templates:
  first``, ``eval_templates: all``.
"""

from __future__ import annotations

from typing import Any

CLASS_INCREMENTAL: list[str] = ["a bad photo of a {}."]

CLASS_INCREMENTAL_RICH: list[str] = [
    "a bad photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a low resolution photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a close-up photo of a {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "art of the {}.",
    "a drawing of a {}.",
]

# Keyed by the MTIL dataset names of ``benchmarks.mtil`` (first entry = training template).
MTIL: dict[str, list[str]] = {
    "Aircraft": ["a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."],
    "Caltech101": ["a photo of a {}.", "a painting of a {}.", "a plastic {}.", "a sculpture of a {}.",
                   "a sketch of a {}.", "a tattoo of a {}.", "a toy {}.", "a rendition of a {}.",
                   "a embroidered {}.", "a cartoon {}.", "a {} in a video game.", "a plushie {}.",
                   "a origami {}.", "art of a {}.", "graffiti of a {}.", "a drawing of a {}.",
                   "a doodle of a {}.", "a photo of the {}.", "a painting of the {}.", "the plastic {}."],
    "CIFAR100": ["a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
                 "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
                 "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
                 "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}."],
    "DTD": ["a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} thing.",
            "a photo of a {} object.", "a photo of the {} texture.", "a photo of the {} pattern.",
            "a photo of the {} thing.", "a photo of the {} object."],
    "EuroSAT": ["a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}."],
    "Flowers102": ["a photo of a {}, a type of flower."],
    "Food101": ["a photo of {}, a type of food."],
    "MNIST": ['a photo of the number: "{}".'],
    "OxfordPet": ["a photo of a {}, a type of pet."],
    "StanfordCars": ["a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
                     "a photo of my dirty {}.", "a photo of my clean {}.", "a photo of my new {}.",
                     "a photo of my old {}."],
    "SUN397": ["a photo of a {}.", "a photo of the {}."],
}


def mtil_templates(dataset: str, first_only: bool = False) -> list[str]:
    """Templates of one MTIL dataset; ``first_only`` keeps just the training template."""
    if dataset not in MTIL:
        raise ValueError(f"no MTIL templates for dataset {dataset!r}; known: {sorted(MTIL)}")
    return MTIL[dataset][:1] if first_only else list(MTIL[dataset])


def resolve_templates(spec: str | list[str], field: str = "templates") -> list[str]:
    """A class-incremental template list from a config value: ``"default"``, ``"rich"`` or a list.

    ``field`` names the option in error messages (``stream.train_templates`` / ``stream.eval_templates``).
    """
    if isinstance(spec, str):
        table = {"default": CLASS_INCREMENTAL, "rich": CLASS_INCREMENTAL_RICH}
        if spec not in table:
            raise ValueError(f"{field}: unknown preset {spec!r}; use 'default', 'rich' or a list of strings")
        return list(table[spec])
    if not isinstance(spec, list) or not spec or not all(isinstance(t, str) for t in spec):
        raise TypeError(f"{field}: expected a preset name or a non-empty list of strings, got {spec!r}")
    for template in spec:
        if "{}" not in template:
            raise ValueError(f"{field}: template {template!r} has no '{{}}' placeholder for the class name")
    return list(spec)


def class_incremental_templates(cfg: Any, stream: str) -> tuple[list[str], list[str]]:
    """(training, evaluation) templates of a class-incremental stream config."""
    return (resolve_templates(cfg.train_templates, f"{stream}: train_templates"),
            resolve_templates(cfg.eval_templates, f"{stream}: eval_templates"))


MTIL_CHOICES = ("first", "all")  # per dataset: its training template only / every template


def check_mtil_choice(value: str, field: str) -> str:
    """``value`` if it is ``"first"`` or ``"all"``; else a ValueError naming ``field``."""
    if value not in MTIL_CHOICES:
        raise ValueError(f"{field}={value!r}; allowed: {', '.join(MTIL_CHOICES)}")
    return value
