"""Split CIFAR-100 (class-incremental); shared class-order and step helpers live in ``common.py``.

Default class order: the one ZSCL / MoE-Adapters / Continual-CLIP ship in their configs
(``class_orders/cifar100.yaml``), the CIFAR-100 order of the original iCaRL code
(``87, 0, 52, 58, 44, ...``). It is often described as "seed 1993", but it is **not**
``np.random.seed(1993); np.random.permutation(100)`` (that gives ``68, 56, 78, ...``; no seed
below 20000 of ``RandomState(seed).permutation(100)`` gives it either), so it is stored verbatim.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from strategies.options import COUNT, option

from .base import CLIPBenchmark, DatasetMissingError, StreamContext
from .common import build_class_incremental, clean_class_name, resolve_class_order
from .templates import class_incremental_templates

log = logging.getLogger(__name__)

# iCaRL's CIFAR-100 order, as in ZSCL / MoE-Adapters / Continual-CLIP `class_orders/cifar100.yaml`.
CIFAR100_ORDER_1993: list[int] = [
    87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86, 84, 96, 18, 24, 32,
    45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83, 17, 81, 41, 12, 37, 59, 25, 20, 80, 73,
    1, 28, 6, 46, 62, 82, 53, 9, 31, 75, 38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89,
    43, 5, 42, 65, 76, 40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
]

CIFAR100_FILES = ("train", "test", "meta")


@dataclass
class SplitCIFAR100Config:
    steps: int = option(10, "experiences of equal size; must divide 100 (10, 20, 50, ...)", range=COUNT)
    class_order: str | int | list[int] = option("seed1993", '"seed1993" (iCaRL/ZSCL order), "identity", seed, list')
    train_templates: str | list[str] = option("default",
        "training prompts: \"default\" (MoZO's one template), \"rich\", a list")
    eval_templates: str | list[str] = option("default", 'evaluation prompts: "default", "rich", or a list')


def _cifar_missing(folder: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"split_cifar100: CIFAR-100 not found and download is off or failed. Put the python version "
        f"(cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extracted) so that "
        f"{folder}/{{{','.join(CIFAR100_FILES)}}} exist.")


class CIFAR100Files(Dataset):
    """CIFAR-100 read from the official python pickles (``train``/``test`` + ``meta``); PIL images.

    torchvision's ``CIFAR100`` checks the archive's MD5 sums on every construction, which rules out
    test copies in the official format; it is used only to download.
    """

    def __init__(self, folder: str, train: bool) -> None:
        with open(os.path.join(folder, "train" if train else "test"), "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        with open(os.path.join(folder, "meta"), "rb") as f:
            self.classes = list(pickle.load(f, encoding="latin1")["fine_label_names"])
        flat = np.asarray(entry["data"], dtype=np.uint8)  # (N, 3072), channel-major rows
        self.data = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
        self.targets = [int(t) for t in entry["fine_labels"]]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return Image.fromarray(self.data[index]), self.targets[index]


def load_cifar100(root: str, download: bool) -> tuple[CIFAR100Files, CIFAR100Files]:
    """CIFAR-100 train and test sets (PIL images, ``.targets``); one clear error if absent."""
    folder = os.path.join(root, "cifar-100-python")
    present = all(os.path.isfile(os.path.join(folder, f)) for f in CIFAR100_FILES)
    if not present and not download:
        raise _cifar_missing(folder)
    if not present:
        from torchvision.datasets import CIFAR100

        try:
            CIFAR100(root, train=True, download=True)
        except (OSError, RuntimeError) as err:  # urllib / integrity errors -> one message
            raise _cifar_missing(folder) from err
    try:
        return CIFAR100Files(folder, train=True), CIFAR100Files(folder, train=False)
    except (OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError) as err:
        raise DatasetMissingError(f"split_cifar100: {folder} holds unreadable CIFAR-100 files "
                                  f"({type(err).__name__}: {err}); replace "
                                  f"{folder}/{{train,test,meta}}") from err


def check_split_cifar100(cfg: SplitCIFAR100Config) -> list[int]:
    """What can be checked without data (steps divide 100, class order, templates); returns the class order."""
    if not isinstance(cfg.steps, int) or cfg.steps <= 0 or 100 % cfg.steps:
        raise ValueError(f"split_cifar100: steps={cfg.steps!r} must be a positive divisor of 100")
    class_incremental_templates(cfg, "split_cifar100")
    return resolve_class_order(cfg.class_order, 100, CIFAR100_ORDER_1993, "split_cifar100")


def build_split_cifar100(cfg: SplitCIFAR100Config, ctx: StreamContext) -> CLIPBenchmark:
    """Split CIFAR-100 in ``cfg.steps`` equal steps over the configured class order."""
    order = check_split_cifar100(cfg)
    templates = class_incremental_templates(cfg, "split_cifar100")
    train, test = load_cifar100(ctx.data_root, ctx.download)
    names = [clean_class_name(c) for c in train.classes]
    sizes = [100 // cfg.steps] * cfg.steps
    return build_class_incremental("split_cifar100", train, test, order, sizes, names, templates, ctx)
