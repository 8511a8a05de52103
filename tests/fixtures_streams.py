"""Tiny copies of datasets in their official on-disk formats, written by the stream tests."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _jpeg(path: Path, value: int, size: int = 8, mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, value % 256, dtype=np.uint8), mode=mode).save(path, format="JPEG")


def write_fake_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> list[str]:
    """``root/cifar-100-python/{train,test,meta}`` pickles with a few 32x32 images per class."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    names = [f"class_{c:02d}" for c in range(100)]
    names[0] = "aquarium_fish"
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(100), per_class)
        data = (labels[:, None] * 2 + np.arange(3072)[None, :] % 7).astype(np.uint8)  # (N, 3072)
        entry = {"data": data, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                 "filenames": [f"{split}_{i}.png" for i in range(len(labels))], "batch_label": split}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}, f)
    return names


def write_fake_mnist(root: Path, per_class: int = 2) -> None:
    """``root/MNIST/raw/*-ubyte`` idx files (big-endian headers, uint8 payload)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
        images = (labels[:, None, None] * 20 + np.zeros((1, 28, 28))).astype(np.uint8)  # (N, 28, 28)
        with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
            f.write(np.array([2051, len(labels), 28, 28], dtype=">i4").tobytes() + images.tobytes())
        with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
            f.write(np.array([2049, len(labels)], dtype=">i4").tobytes() + labels.tobytes())


def write_fake_dtd(root: Path, classes: tuple[str, ...] = ("banded", "blotchy", "zigzagged")) -> None:
    """``root/dtd/dtd/images/<class>/*.jpg`` + ``labels/{train,val,test}1.txt`` (a folder-based set)."""
    base = root / "dtd" / "dtd"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c_idx, cls in enumerate(classes):
        for k, split in enumerate(("train", "train", "val", "test")):
            rel = f"{cls}/{cls}_{k:04d}.jpg"
            _jpeg(base / "images" / rel, 40 * c_idx + k)
            lines[split].append(rel)
    (base / "labels").mkdir(parents=True)
    for split, rels in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(rels) + "\n")


def write_fake_imagenet_r(root: Path, wnids: list[str], test_list: list[str]) -> tuple[int, int]:
    """``root/imagenet-r/<wnid>/*.jpg``: per class its first listed test file and one unlisted file.

    Returns (train images, test images) written.
    """
    first_test: dict[str, str] = {}
    for rel in test_list:
        first_test.setdefault(rel.split("/")[0], rel)
    n_train = n_test = 0
    for i, wnid in enumerate(wnids):
        _jpeg(root / "imagenet-r" / wnid / "zz_train_only_0.jpg", i)
        n_train += 1
        if wnid in first_test:
            _jpeg(root / "imagenet-r" / first_test[wnid], i + 1)
            n_test += 1
    return n_train, n_test


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


class MemorySource:
    """A stand-in for a torchvision dataset: (PIL image, label) pairs made on access."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.new("L", (8, 8), color=self.labels[i]), self.labels[i]


def fake_mtil_loader(n_classes: int):
    """An MTIL source loader (benchmarks.mtil.LOADERS) of 3 training and 1 test image per class."""
    from benchmarks.mtil import SourceSplit

    def load(root: str, download: bool, seed: int) -> SourceSplit:
        train_t = [c for c in range(n_classes) for _ in range(3)]
        test_t = list(range(n_classes))
        return SourceSplit(MemorySource(train_t), list(range(len(train_t))), train_t, MemorySource(test_t),
                           list(range(len(test_t))), test_t, [f"c{c}" for c in range(n_classes)])
    return load
