"""What of a stream's data is on disk: present / missing / corrupt rows for ``runs data check``.

Statuses: ``present``; ``incomplete`` (fewer files than the official release — a subset or an
interrupted extraction; runs still work on what is there); ``missing``; ``corrupt`` (does not decode
or parse). ``check_stream(name, data_root)`` only lists folders, counts files, reads small annotation files
and decodes two images per dataset (the first and one drawn with a fixed seed); it never downloads.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Literal

Status = Literal["present", "incomplete", "missing", "corrupt"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class CheckLine:
    dataset: str  # e.g. "TinyImageNet" or "mtil/EuroSAT"
    item: str  # the file or folder checked
    status: Status
    detail: str = ""  # counts, the decode error, what is expected


def _decode(path: str) -> str | None:
    """None if the image decodes, else the error text."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.convert("RGB").load()
    except (OSError, ValueError, SyntaxError) as err:  # PIL's decode errors
        return f"{type(err).__name__}: {err}"
    return None


def _image_files(folder: str) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(folder):
        found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def check_images(dataset: str, folder: str, expected: int | None) -> list[CheckLine]:
    """Rows for an image folder: missing, count vs expected, and whether two images decode."""
    if not os.path.isdir(folder):
        return [CheckLine(dataset, folder, "missing", "folder absent")]
    files = _image_files(folder)
    if not files:
        return [CheckLine(dataset, folder, "missing", "no image files")]
    count = f"{len(files)} images" + (f" (expected {expected})" if expected else "")
    # fewer files than the official release: a subset (e.g. ../shared/data) or an interrupted extraction
    status: Status = "present" if expected in (None, len(files)) else "incomplete"
    rows = [CheckLine(dataset, folder, status, count)]
    for path in dict.fromkeys([files[0], random.Random(0).choice(files)]):
        err = _decode(path)
        rows.append(CheckLine(dataset, path, "corrupt" if err else "present", err or "decodes"))
    return rows


def check_files(dataset: str, folder: str, names: list[str]) -> list[CheckLine]:
    """One row per required file: present (with size) or missing."""
    rows = []
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            rows.append(CheckLine(dataset, path, "present", f"{os.path.getsize(path)} bytes"))
        else:
            rows.append(CheckLine(dataset, path, "missing", "required file"))
    return rows


def _count_lines(path: str) -> int:
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def check_cifar100(root: str, dataset: str = "CIFAR100") -> list[CheckLine]:
    rows = check_files(dataset, os.path.join(root, "cifar-100-python"), ["train", "test", "meta"])
    if all(r.status == "present" for r in rows):
        import pickle

        try:
            with open(os.path.join(root, "cifar-100-python", "meta"), "rb") as f:
                n = len(pickle.load(f, encoding="latin1")["fine_label_names"])
            rows.append(CheckLine(dataset, "meta", "present" if n == 100 else "corrupt", f"{n} class names"))
        except (pickle.UnpicklingError, KeyError, EOFError) as err:
            rows.append(CheckLine(dataset, "meta", "corrupt", str(err)))
    return rows


def check_tinyimagenet(root: str) -> list[CheckLine]:
    folder, ds = os.path.join(root, "tiny-imagenet-200"), "TinyImageNet"
    rows = check_files(ds, folder, ["wnids.txt", "words.txt", os.path.join("val", "val_annotations.txt")])
    if rows[0].status == "present":
        n = _count_lines(os.path.join(folder, "wnids.txt"))
        rows.append(CheckLine(ds, "wnids.txt", "present" if n == 200 else "corrupt",
                              f"{n} classes (expected 200)"))
    if rows[2].status == "present":
        n = _count_lines(os.path.join(folder, "val", "val_annotations.txt"))
        rows.append(CheckLine(ds, "val_annotations.txt", "present" if n == 10000 else "corrupt",
                              f"{n} labels (expected 10000)"))
    rows += check_images(ds, os.path.join(folder, "train"), 100_000)
    rows += check_images(ds, os.path.join(folder, "val", "images"), 10_000)
    return rows


def check_imagenet_r(root: str) -> list[CheckLine]:
    from .imagenet_r import read_test_list

    folder, ds = os.path.join(root, "imagenet-r"), "ImageNet-R"
    rows = check_images(ds, folder, 30_000)
    if os.path.isdir(folder):
        listed = read_test_list("coda")
        absent = sum(not os.path.isfile(os.path.join(folder, rel)) for rel in listed)
        rows.append(CheckLine(ds, "test split (coda)", "present" if absent == 0 else "corrupt",
                              f"{len(listed) - absent} of {len(listed)} listed test images present"))
    return rows


# MTIL dataset -> (image folder under the root, expected image count or None, required files)
_MTIL_LAYOUT: dict[str, tuple[str, int | None, list[str]]] = {
    "Aircraft": ("fgvc-aircraft-2013b/data/images", 10_000,
                 ["fgvc-aircraft-2013b/data/variants.txt",
                  "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
                  "fgvc-aircraft-2013b/data/images_variant_test.txt"]),
    "Caltech101": ("caltech101/101_ObjectCategories", None, []),
    "DTD": ("dtd/dtd/images", 5_640, ["dtd/dtd/labels/train1.txt", "dtd/dtd/labels/test1.txt"]),
    "EuroSAT": ("eurosat/2750", 27_000, []),
    "Flowers102": ("flowers-102/jpg", 8_189, ["flowers-102/imagelabels.mat", "flowers-102/setid.mat"]),
    "Food101": ("food-101/images", 101_000, ["food-101/meta/train.json", "food-101/meta/test.json"]),
    "OxfordPet": ("oxford-iiit-pet/images", 7_390,
                  ["oxford-iiit-pet/annotations/trainval.txt", "oxford-iiit-pet/annotations/test.txt"]),
    "StanfordCars": ("stanford_cars", 16_185,
                     ["stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
                      "stanford_cars/cars_test_annos_withlabels.mat"]),
    "SUN397": ("SUN397", 108_754, ["SUN397/ClassName.txt"]),
}
_MNIST_FILES = [f"MNIST/raw/{p}-{k}" for p in ("train", "t10k")
                for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]


def check_mtil_dataset(name: str, root: str) -> list[CheckLine]:
    """Rows for one MTIL dataset in its torchvision layout."""
    ds = f"mtil/{name}"
    if name == "CIFAR100":
        return check_cifar100(root, ds)
    if name == "MNIST":
        return check_files(ds, root, _MNIST_FILES)
    folder, expected, files = _MTIL_LAYOUT[name]
    rows = check_files(ds, root, files)
    img_rows = check_images(ds, os.path.join(root, folder), expected)
    if name == "Caltech101" and os.path.isdir(os.path.join(root, folder)):
        n = len([d for d in os.listdir(os.path.join(root, folder)) if d != "BACKGROUND_Google"])
        rows.append(CheckLine(ds, "categories", "present" if n == 101 else "corrupt", f"{n} (expected 101)"))
    return rows + img_rows


def check_stream(name: str, data_root: str) -> list[CheckLine]:
    """Present / missing / corrupt rows for every dataset a stream reads."""
    from .mtil import ORDER_I

    if name == "split_cifar100":
        return check_cifar100(data_root)
    if name == "split_tinyimagenet":
        return check_tinyimagenet(data_root)
    if name == "split_imagenet_r":
        return check_imagenet_r(data_root)
    if name == "mtil":
        return [row for ds in ORDER_I for row in check_mtil_dataset(ds, data_root)]
    if name == "synthetic":
        return [CheckLine("synthetic", "-", "present", "generated in memory, no files")]
    raise ValueError(f"unknown stream {name!r}; known: split_cifar100, split_tinyimagenet, split_imagenet_r, "
                     f"mtil, synthetic")


def format_report(lines: list[CheckLine]) -> str:
    """The rows as an aligned text table, with a one-line summary at the end."""
    widths = [max([len(h)] + [len(str(getattr(r, h))) for r in lines]) for h in ("dataset", "item", "status")]
    header = "  ".join(h.ljust(w) for h, w in zip(("dataset", "item", "status"), widths, strict=True)) + "  detail"
    rows = [
        "  ".join(str(getattr(r, h)).ljust(w) for h, w in zip(("dataset", "item", "status"), widths, strict=True))
        + f"  {r.detail}"
        for r in lines
    ]
    counts = {s: sum(r.status == s for r in lines) for s in ("present", "incomplete", "missing", "corrupt")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join([header, *rows, "", summary])
