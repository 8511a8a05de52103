"""ZSCL's reference data: an ImageFolder-style image directory and a captions file in Conceptual
Captions' TSV format (docs/methods/zscl.md#reference-data).

- images: ``<dir>/<class>/**/<image>`` (ImageNet's ``train/`` as the official MTIL recipe reads it,
  ``--ref-dataset ImageNet``; CC images for the CIL recipe); read with the model's evaluation transform, as
  the official code does (``test_preprocess``). The labels are never used.
- captions: one ``caption<TAB>url`` per line (CC's ``Validation_GCC-1.1.0-Validation.tsv``; the official
  ``--ref-sentences conceptual_captions`` keeps the ~15.8k captions ``gather_cc.py`` could fetch). Only the
  caption column is read.

:func:`reference_problems` says, before any work, what keeps them from being read (one message per
file: the field, the path, and where the data comes from). :func:`standin_captions` writes the
project's small stand-in captions file from class names and templates (``runs/suites/zscl_tiny.yaml``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SOURCES = {
    "images": "ImageNet's training images (ILSVRC2012 train, <dir>/<wnid>/*.JPEG) for the MTIL recipe, CC images "
              "for the CIL recipe",
    "captions": "Conceptual Captions' validation captions (Validation_GCC-1.1.0-Validation.tsv from "
                "ai.google.com/research/ConceptualCaptions)",
}
# The stand-in captions of runs/suites/zscl_tiny.yaml (NOT Conceptual Captions): these names × templates.
STANDIN_CLASSES = ("goldfish", "tabby cat", "school bus", "mountain", "bridge", "pizza", "lighthouse", "forest",
                   "river", "airplane", "bicycle", "dog", "horse", "beach", "city street", "kitchen")
STANDIN_TEMPLATES = ("a photo of a {}.", "a close-up photo of a {}.", "a {} in the wild.",
                     "a blurry photo of a {}.", "a drawing of a {}.")


def _message(key: str, path: str | None, why: str) -> str:
    return (f"method.reference.{key} = {path!r}: {why}; it holds {SOURCES[key]} "
            f"(docs/methods/zscl.md#reference-data)")


def read_captions(path: str | os.PathLike) -> list[str]:
    """The caption column of a CC-format TSV file (empty lines skipped). ValueError when there is none."""
    captions = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            caption = line.rstrip("\n").split("\t")[0].strip()
            if caption:
                captions.append(caption)
    if not captions:
        raise ValueError(f"{path}: no caption (expected caption<TAB>url per line)")
    return captions


def _first_image(folder: Path) -> Path | None:
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for root, _, files in os.walk(class_dir):
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    return Path(root) / name
    return None


def images_problem(path: str | None) -> str | None:
    """Why the ImageFolder directory ``path`` cannot be read (None when it can: one image opened)."""
    if path is None:
        return _message("images", path, "not set")
    folder = Path(path)
    if not folder.is_dir():
        return _message("images", path, f"no such directory (resolved: {folder.resolve()})")
    first = _first_image(folder)
    if first is None:
        return _message("images", path, "no class folder with an image (ImageFolder layout <dir>/<class>/<image>)")
    try:
        from PIL import Image

        with Image.open(first) as image:
            image.verify()
    except (OSError, SyntaxError) as error:
        return _message("images", path, f"unreadable image {first} ({error})")
    return None


def captions_problem(path: str | None) -> str | None:
    """Why the captions file ``path`` cannot be read (None when it can)."""
    if path is None:
        return _message("captions", path, "not set")
    if not Path(path).is_file():
        return _message("captions", path, f"no such file (resolved: {Path(path).resolve()})")
    try:
        read_captions(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return _message("captions", path, f"unreadable ({error})")
    return None


def reference_problems(cfg: Any) -> list[str]:
    """The problems of the reference data a ZSCL config reads (``[]``: none, or none is read)."""
    if not cfg.reads_reference_data:
        return []
    problems = []
    if cfg.ref_images == "reference":
        problems.append(images_problem(cfg.reference.images))
    if cfg.ref_texts == "captions":
        problems.append(captions_problem(cfg.reference.captions))
    return [p for p in problems if p is not None]


class ImageFolderImages(Dataset):
    """The images of an ImageFolder-style directory (sorted paths, labels dropped), with ``transform``."""

    def __init__(self, root: str | os.PathLike, transform: Any) -> None:
        root = Path(root)
        self.paths = sorted(Path(r) / n for c in sorted(p for p in root.iterdir() if p.is_dir())
                            for r, _, files in os.walk(c) for n in files if n.lower().endswith(IMAGE_EXTENSIONS))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def standin_captions(class_names: Iterable[str] = STANDIN_CLASSES,
                     templates: Iterable[str] = STANDIN_TEMPLATES) -> list[str]:
    """Stand-in captions: every template filled with every class name (class-major order)."""
    templates = list(templates)
    return [t.format(name) for name in class_names for t in templates]


def write_captions(path: str | os.PathLike, captions: Iterable[str], url: str = "standin:class-name-template") -> None:
    """A CC-format TSV file (``caption<TAB>url``); the url column marks the rows as stand-ins."""
    text = "".join(f"{c}\t{url}\n" for c in captions)
    Path(path).write_text(text, encoding="utf-8")
