"""Prompt templates: ``{}`` is replaced by a class name (see ``base.fill_templates``).

- ``CLASS_INCREMENTAL``: MoZO's code prompts every class with the single template
  ``"a bad photo of a {}."``; ``CLASS_INCREMENTAL_RICH`` is a larger CLIP-style ensemble for
  zero-shot evaluation with several templates.
- ``MTIL``: per-dataset templates in the style of CLIP's zero-shot notebook as used by ZSCL /
  WiSE-FT. The **first** template of each list is the one a method trains with (ConDU uses the
  first template of the dataset); the rest are only for ensembling at evaluation.
"""

from __future__ import annotations

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


def resolve_templates(spec: str | list[str]) -> list[str]:
    """A template list from a config value: ``"default"``, ``"rich"`` or an explicit list."""
    if isinstance(spec, str):
        table = {"default": CLASS_INCREMENTAL, "rich": CLASS_INCREMENTAL_RICH}
        if spec not in table:
            raise ValueError(f"templates: unknown preset {spec!r}; use 'default', 'rich' or a list of "
                             f"strings")
        return list(table[spec])
    if not isinstance(spec, list) or not spec or not all(isinstance(t, str) for t in spec):
        raise TypeError(f"templates: expected a preset name or a non-empty list of strings, got {spec!r}")
    return list(spec)
