"""Split TinyImageNet (class-incremental): 100 base classes, then equal increments.

Class ids follow ``wnids.txt`` (line i = class i), as in MoE-Adapters' ``tinyimagenet_classes.txt``.
Default order: the one ZSCL / MoE-Adapters ship (``class_orders/tinyimagenet.yaml``, starting
``131, 181, 22, 172, 144``). It is stored verbatim: it is not ``np.random.seed(1993);
np.random.permutation(200)`` (that starts ``168, 136, 51``) nor ``RandomState(s).permutation(200)``
for any seed s < 20000. Test set = the official validation set (50 images per class).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from strategies.options import COUNT, option

from .base import CLIPBenchmark, DatasetMissingError, StreamContext
from .common import ImageFileDataset, build_class_incremental, ensure_downloaded, resolve_class_order, step_sizes
from .templates import class_incremental_templates

log = logging.getLogger(__name__)

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

# ZSCL / MoE-Adapters `class_orders/tinyimagenet.yaml` (ids = wnids.txt line numbers).
TINY_ORDER_1993: list[int] = [
    131, 181, 22, 172, 144, 92, 97, 187, 58, 93, 6, 70, 106, 68, 153, 168, 179, 199, 29, 46, 9, 142,
    134, 88, 193, 110, 26, 32, 117, 112, 17, 39, 166, 13, 94, 138, 109, 147, 51, 101, 59, 188, 116, 5,
    170, 99, 100, 167, 180, 146, 65, 1, 104, 43, 38, 184, 123, 171, 137, 162, 71, 44, 95, 174, 12, 7,
    54, 152, 21, 47, 28, 176, 34, 2, 132, 118, 42, 189, 150, 14, 165, 41, 192, 45, 82, 128, 63, 57,
    197, 160, 53, 75, 108, 135, 121, 159, 183, 67, 169, 50, 87, 69, 89, 196, 115, 19, 148, 96, 86, 11,
    8, 60, 33, 173, 78, 4, 119, 105, 182, 127, 177, 30, 186, 40, 49, 178, 76, 157, 161, 73, 164, 151,
    31, 74, 191, 27, 125, 198, 81, 20, 155, 114, 139, 36, 61, 56, 145, 48, 16, 83, 62, 85, 126, 0, 102,
    23, 3, 140, 15, 195, 133, 113, 190, 141, 52, 163, 156, 80, 111, 90, 175, 143, 120, 84, 18, 25, 79,
    37, 154, 136, 64, 158, 24, 185, 72, 35, 129, 55, 149, 91, 122, 77, 103, 124, 130, 66, 10, 107, 194,
    98,
]


@dataclass
class SplitTinyImageNetConfig:
    initial: int = option(100, "classes in the first experience", range=COUNT)
    increment: int = option(10, "classes in each later experience (initial + k*increment must be 200)", range=COUNT)
    class_order: str | int | list[int] = option("seed1993", '"seed1993" (ZSCL order), "identity", seed, list')
    train_templates: str | list[str] = option("default",
        "training prompts: \"default\" (MoZO's one template), \"rich\", a list")
    eval_templates: str | list[str] = option("default", 'evaluation prompts: "default", "rich", or a list')
    train_per_class: int | None = option(None,
        "keep only the first k training images per class (None: all)", range=COUNT)


def _tiny_missing(folder: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"split_tinyimagenet: TinyImageNet not found at {folder} and download is off or failed. Unzip "
        f"{TINY_URL} there so that {folder}/wnids.txt, {folder}/words.txt, "
        f"{folder}/train/<wnid>/images/*.JPEG and {folder}/val/images/*.JPEG + "
        f"{folder}/val/val_annotations.txt exist.")


def _tiny_complete(folder: str) -> bool:
    needed = ("wnids.txt", "words.txt", os.path.join("val", "val_annotations.txt"))
    return all(os.path.isfile(os.path.join(folder, f)) for f in needed) and os.path.isdir(
        os.path.join(folder, "train"))


def ensure_tinyimagenet(root: str, download: bool) -> str:
    """Folder ``<root>/tiny-imagenet-200``, downloading it if allowed; one clear error otherwise."""
    folder = os.path.join(root, "tiny-imagenet-200")
    return ensure_downloaded(folder, _tiny_complete, TINY_URL, root, download, _tiny_missing(folder))


def first_synonym(words: str) -> str:
    """Prompt-ready name from a words.txt entry: "goldfish, Carassius auratus" -> "goldfish"."""
    return words.split(",")[0].strip()


def read_tiny_classes(folder: str) -> tuple[list[str], list[str]]:
    """(wnids in class-id order, cleaned names) from wnids.txt and words.txt."""
    with open(os.path.join(folder, "wnids.txt")) as f:
        wnids = [line.strip() for line in f if line.strip()]
    words: dict[str, str] = {}
    with open(os.path.join(folder, "words.txt")) as f:
        for line in f:
            wnid, _, text = line.rstrip("\n").partition("\t")
            words[wnid] = text
    missing = [w for w in wnids if w not in words]
    if missing:
        raise DatasetMissingError(f"split_tinyimagenet: {folder}/words.txt lacks {len(missing)} wnids "
                                  f"of wnids.txt, e.g. {missing[:3]}")
    return wnids, [first_synonym(words[w]) for w in wnids]


def tiny_train_files(folder: str, wnids: list[str], per_class: int | None = None) -> ImageFileDataset:
    """``train/<wnid>/images/*.JPEG`` sorted by name per class (the first ``per_class`` if given)."""
    paths, targets = [], []
    for cid, wnid in enumerate(wnids):
        img_dir = os.path.join(folder, "train", wnid, "images")
        if not os.path.isdir(img_dir):
            raise _tiny_missing(folder)
        files = sorted(f for f in os.listdir(img_dir) if f.lower().endswith((".jpeg", ".jpg", ".png")))
        files = files[:per_class] if per_class else files
        paths += [os.path.join(img_dir, f) for f in files]
        targets += [cid] * len(files)
    return ImageFileDataset(paths, targets)


def tiny_val_files(folder: str, wnids: list[str]) -> ImageFileDataset:
    """``val/images`` labelled by ``val/val_annotations.txt`` (file, wnid, box)."""
    index = {w: i for i, w in enumerate(wnids)}
    paths, targets = [], []
    with open(os.path.join(folder, "val", "val_annotations.txt")) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            if parts[1] not in index:
                raise DatasetMissingError(f"split_tinyimagenet: val_annotations.txt names {parts[1]!r}, "
                                          f"which is not in wnids.txt")
            paths.append(os.path.join(folder, "val", "images", parts[0]))
            targets.append(index[parts[1]])
    return ImageFileDataset(paths, targets)


def check_split_tinyimagenet(cfg: SplitTinyImageNetConfig) -> tuple[list[int], list[int]]:
    """What can be checked without data (initial + k*increment tiles 200, class order)."""
    sizes = step_sizes(200, cfg.initial, cfg.increment, "split_tinyimagenet")
    class_incremental_templates(cfg, "split_tinyimagenet")
    return sizes, resolve_class_order(cfg.class_order, 200, TINY_ORDER_1993, "split_tinyimagenet")


def build_split_tinyimagenet(cfg: SplitTinyImageNetConfig, ctx: StreamContext) -> CLIPBenchmark:
    """Split TinyImageNet: ``initial`` classes, then ``increment`` per step, in the configured order."""
    sizes, order = check_split_tinyimagenet(cfg)
    templates = class_incremental_templates(cfg, "split_tinyimagenet")
    folder = ensure_tinyimagenet(ctx.data_root, ctx.download)
    wnids, names = read_tiny_classes(folder)
    if len(wnids) != 200:
        raise DatasetMissingError(f"split_tinyimagenet: {folder}/wnids.txt lists {len(wnids)} classes, "
                                  f"not 200")
    train = tiny_train_files(folder, wnids, cfg.train_per_class)
    test = tiny_val_files(folder, wnids)
    return build_class_incremental("split_tinyimagenet", train, test, order, sizes, names, templates, ctx)

