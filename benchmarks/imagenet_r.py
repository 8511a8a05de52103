"""Split ImageNet-R (class-incremental): 200 classes, default 10 steps of 20.

Train/test split: CODA-Prompt's fixed 80/20 split (``dataloaders/splits/imagenet-r_{train,test}.yaml``
of GT-RIPL/CODA-Prompt, copied verbatim into Mammoth as ``datasets/imagenet_r_utils/``; its test
list holds about 6,000 of the 30,000 images, the train list the other ~24,000). The stream reads
the **test** list from ``splits/imagenet_r_test_coda.txt`` (one ``<wnid>/<file>`` per line, the
``data/imagenet-r/`` prefix dropped) and trains on every other image in ``imagenet-r/``.
Until that file is shipped the builder raises a ``FileNotFoundError`` naming it.

Class ids: the 200 WordNet ids sorted (``splits/imagenet_r_classes.txt``, with CLIP's curated
ImageNet names). CODA-Prompt's own integer targets are in a different order (e.g. its target 153 is
n01910747, sorted index 27), so ``class_order="identity"`` does not reproduce CODA's task
composition; pass an explicit list to do so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from strategies.options import COUNT, option

from .base import CLIPBenchmark, DatasetMissingError, StreamContext
from .common import ImageFileDataset, build_class_incremental, ensure_downloaded, resolve_class_order, step_sizes
from .templates import class_incremental_templates

log = logging.getLogger(__name__)

IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
CLASSES_FILE = SPLITS_DIR / "imagenet_r_classes.txt"
SPLIT_FILES = {"coda": SPLITS_DIR / "imagenet_r_test_coda.txt"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class SplitImageNetRConfig:
    steps: int = option(10, "experiences of equal size; must divide 200", range=COUNT)
    class_order: str | int | list[int] = option("identity", '"identity" (sorted wnids), an int seed, or a list')
    train_templates: str | list[str] = option("default",
        "training prompts: \"default\" (MoZO's one template), \"rich\", a list")
    eval_templates: str | list[str] = option("default", 'evaluation prompts: "default", "rich", or a list')
    split: str = option("coda", "which shipped train/test split (\"coda\": CODA-Prompt's 80/20 lists)")


def read_classes() -> tuple[list[str], list[str]]:
    """(sorted wnids, names) of the 200 ImageNet-R classes from the shipped table."""
    wnids, names = [], []
    with open(CLASSES_FILE) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            wnid, name = line.rstrip("\n").split("\t")
            wnids.append(wnid)
            names.append(name)
    return wnids, names


def read_test_list(split: str) -> list[str]:
    """Relative ``<wnid>/<file>`` paths of the test split."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split_imagenet_r: unknown split {split!r}; shipped: {sorted(SPLIT_FILES)}")
    path = SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"split_imagenet_r: split list {path} is missing from the package")
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def _missing(folder: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"split_imagenet_r: ImageNet-R not found at {folder} and download is off or failed. Extract "
        f"{IMAGENET_R_URL} into the data root so that {folder}/<wnid>/*.jpg exist "
        f"(200 folders, 30,000 images).")


def ensure_imagenet_r(root: str, download: bool) -> str:
    """Folder ``<root>/imagenet-r``, downloading it if allowed; one clear error otherwise."""
    folder = os.path.join(root, "imagenet-r")
    return ensure_downloaded(folder, os.path.isdir, IMAGENET_R_URL, root, download, _missing(folder))


def split_files(folder: str, wnids: list[str],
                test_list: list[str]) -> tuple[ImageFileDataset, ImageFileDataset]:
    """Train = every image not in ``test_list``; test = the listed images that exist."""
    index = {w: i for i, w in enumerate(wnids)}
    test_set = set(test_list)
    train_p: list[str] = []
    train_t: list[int] = []
    test_p: list[str] = []
    test_t: list[int] = []
    for wnid in wnids:
        class_dir = os.path.join(folder, wnid)
        if not os.path.isdir(class_dir):
            raise DatasetMissingError(f"split_imagenet_r: class folder {class_dir} is missing")
        for name in sorted(os.listdir(class_dir)):
            if not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            rel = f"{wnid}/{name}"
            paths, targets = (test_p, test_t) if rel in test_set else (train_p, train_t)
            paths.append(os.path.join(class_dir, name))
            targets.append(index[wnid])
    if len(test_p) != len(test_set):
        log.warning("split_imagenet_r: %d of %d listed test images are absent from %s",
                    len(test_set) - len(test_p), len(test_set), folder)
    return ImageFileDataset(train_p, train_t), ImageFileDataset(test_p, test_t)


def check_split_imagenet_r(cfg: SplitImageNetRConfig) -> tuple[list[int], list[int]]:
    """What can be checked without data (steps divide 200, class order); returns sizes and order."""
    if not isinstance(cfg.steps, int) or cfg.steps <= 0 or 200 % cfg.steps:
        raise ValueError(f"split_imagenet_r: steps={cfg.steps!r} must be a positive divisor of 200")
    sizes = step_sizes(200, 200 // cfg.steps, 200 // cfg.steps, "split_imagenet_r")
    class_incremental_templates(cfg, "split_imagenet_r")
    return sizes, resolve_class_order(cfg.class_order, 200, None, "split_imagenet_r")


def build_split_imagenet_r(cfg: SplitImageNetRConfig, ctx: StreamContext) -> CLIPBenchmark:
    """Split ImageNet-R in ``cfg.steps`` equal steps over the shipped train/test split."""
    sizes, order = check_split_imagenet_r(cfg)
    templates = class_incremental_templates(cfg, "split_imagenet_r")
    test_list = read_test_list(cfg.split)
    folder = ensure_imagenet_r(ctx.data_root, ctx.download)
    wnids, names = read_classes()
    train, test = split_files(folder, wnids, test_list)
    return build_class_incremental("split_imagenet_r", train, test, order, sizes, names, templates, ctx)
