"""What of a stream's data is on disk, for ``runs data check`` and a run's provenance.

Rows (one per file or folder checked): ``present``; ``incomplete`` (fewer files or samples than the
official release — a subset or an interrupted extraction; runs still work on what is there);
``missing``; ``corrupt`` (does not decode or parse). Per dataset, a verdict (:func:`dataset_verdicts`):
**complete** (every row present: the official split sizes), **subset** (readable but smaller, e.g. the
folders of ``../shared/data``: a run is allowed and marked so in its provenance and the results table),
**missing** or **corrupt**.

``check_stream(name, data_root, cfg)`` follows the stream's options (MTIL: its order and ``datasets``
selection); it only lists folders, counts files, reads small annotation files / headers, checks that
every class folder exists and holds an image (a missing or empty one is ``corrupt``, named) and decodes two
images per image folder (the first and one drawn with a fixed seed); it never downloads. Under
:func:`thorough` (``runs data check``) it also reads the end of every listed image (a JPEG's end-of-image
marker, a PNG's ``IEND``: a truncated file lacks it) and fully decodes each file that fails it and a sample
of up to :data:`DECODE_SAMPLE` per image folder (the first and the rest drawn with seed 0), naming each
file that does not decode. A relative ``data_root`` is relative to the working directory
(:func:`resolve_root`), like ``output_dir``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["present", "incomplete", "missing", "corrupt"]
Verdict = Literal["complete", "subset", "missing", "corrupt"]
VERDICTS: tuple[Verdict, ...] = ("complete", "subset", "missing", "corrupt")  # in increasing severity
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DECODE_SAMPLE = 32  # images fully decoded per image folder by `runs data check` (besides the suspects)
_THOROUGH = contextvars.ContextVar("data_check_thorough", default=False)


@contextlib.contextmanager
def thorough() -> Iterator[None]:
    """Inside, image folders are checked file by file (end markers, a decoded sample): ``runs data check``."""
    token = _THOROUGH.set(True)
    try:
        yield
    finally:
        _THOROUGH.reset(token)


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


def check_images(dataset: str, folder: str, expected: int | None, exclude: tuple[str, ...] = ()) -> list[CheckLine]:
    """Rows for an image folder: missing, count vs expected, and whether two images decode.

    ``exclude``: top-level sub-folders not counted (Caltech101's ``BACKGROUND_Google``).
    """
    if not os.path.isdir(folder):
        return [CheckLine(dataset, folder, "missing", "folder absent")]
    skip = tuple(os.path.join(folder, name) + os.sep for name in exclude)
    files = [f for f in _image_files(folder) if not f.startswith(skip)]
    if not files:
        return [CheckLine(dataset, folder, "missing", "no image files")]
    count = f"{len(files)} images" + (f" (expected {expected})" if expected else "")
    # fewer files than the official release: a subset (e.g. ../shared/data) or an interrupted extraction
    status: Status = "present" if expected is None or len(files) >= expected else "incomplete"
    rows = [CheckLine(dataset, folder, status, count)]
    if _THOROUGH.get():
        return rows + _check_every_image(dataset, folder, files)
    for path in dict.fromkeys([files[0], random.Random(0).choice(files)]):
        err = _decode(path)
        rows.append(CheckLine(dataset, path, "corrupt" if err else "present", err or "decodes"))
    return rows


def _ends_whole(path: str) -> bool:
    """The file ends as a whole image does: a JPEG's end-of-image marker, a PNG's ``IEND`` chunk."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64))
            tail = f.read()
    except OSError:
        return False
    return (b"IEND" if path.lower().endswith(".png") else b"\xff\xd9") in tail


def _check_every_image(dataset: str, folder: str, files: list[str]) -> list[CheckLine]:
    """``runs data check``: the end of every file read; suspects and a sample of :data:`DECODE_SAMPLE`
    decoded; one ``corrupt`` row per file that does not decode, then one row saying what was checked."""
    suspects = [path for path in files if not _ends_whole(path)]
    sample = [files[0]] + random.Random(0).sample(files[1:], min(len(files), DECODE_SAMPLE) - 1)
    decode = list(dict.fromkeys(suspects + sample))
    rows = []
    for path in decode:
        err = _decode(path)
        if err:
            rows.append(CheckLine(dataset, path, "corrupt", err))
    good = len(decode) - len(rows)
    rows.append(CheckLine(dataset, f"{folder} (decoding)", "present",  # what was checked; bad files: above
                          f"end of all {len(files)} files read; {len(decode)} decoded (the first, "
                          f"{len(sample) - 1} drawn with seed 0, {len(suspects)} without an end marker): "
                          f"{good} decode"))
    return rows


def check_class_folders(dataset: str, folder: str, expected: list[str] | None = None,
                        exclude: tuple[str, ...] = ()) -> list[CheckLine]:
    """Every class folder (``expected``, else each sub-folder of ``folder`` but ``exclude``) exists and
    holds at least one image: one ``corrupt`` row naming each missing or empty class (an interrupted
    extraction; a run would fail on its class order)."""
    if not os.path.isdir(folder):
        return []  # the image rows say the folder is absent
    present = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and d not in exclude)
    classes = expected if expected is not None else present
    rows = [CheckLine(dataset, os.path.join(folder, c), "corrupt", "class folder absent (the class list names it)")
            for c in classes if c not in present]
    rows += [CheckLine(dataset, os.path.join(folder, c), "corrupt", "class folder holds no image")
             for c in classes if c in present and not _image_files(os.path.join(folder, c))]
    if not rows:
        rows = [CheckLine(dataset, f"{folder} (classes)", "present", f"{len(classes)} class folders, each with images")]
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


CIFAR_IMAGE_BYTES = 3072  # one 32x32 RGB image in the python pickles
CIFAR_SIZES = {"train": 50_000, "test": 10_000}


def check_cifar100(root: str, dataset: str = "CIFAR100") -> list[CheckLine]:
    rows = check_files(dataset, os.path.join(root, "cifar-100-python"), ["train", "test", "meta"])
    if all(r.status == "present" for r in rows):
        for split, n in CIFAR_SIZES.items():  # the pixels alone of n images take n * 3072 bytes
            size = os.path.getsize(os.path.join(root, "cifar-100-python", split))
            status: Status = "present" if size >= n * CIFAR_IMAGE_BYTES else "incomplete"
            rows.append(CheckLine(dataset, f"{split} images", status,
                                  f"{size} bytes (>= {n * CIFAR_IMAGE_BYTES} for {n} images)"))
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
    wnids = os.path.join(folder, "wnids.txt")
    if os.path.isfile(wnids):
        with open(wnids) as f:
            rows += check_class_folders(ds, os.path.join(folder, "train"), [w.strip() for w in f if w.strip()])
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
        rows += check_class_folders(ds, folder, sorted({rel.split("/")[0] for rel in listed}))
    return rows


# MTIL dataset -> (image folder under the root, expected image count or None, required files)
_MTIL_LAYOUT: dict[str, tuple[str, int | None, list[str]]] = {
    "Aircraft": ("fgvc-aircraft-2013b/data/images", 10_000,
                 ["fgvc-aircraft-2013b/data/variants.txt",
                  "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
                  "fgvc-aircraft-2013b/data/images_variant_test.txt"]),
    "Caltech101": ("caltech101/101_ObjectCategories", 8_677, []),  # without BACKGROUND_Google
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
_MNIST_SIZES = {"train": 60_000, "t10k": 10_000}
_IDX_MAGIC = {"images-idx3-ubyte": 2051, "labels-idx1-ubyte": 2049}
_IDX_BYTES = {"images-idx3-ubyte": (16, 28 * 28), "labels-idx1-ubyte": (8, 1)}  # (header, bytes per sample)


def check_mnist(root: str, dataset: str = "mtil/MNIST") -> list[CheckLine]:
    """Required idx files, then each file's sample count from its big-endian header."""
    rows = check_files(dataset, root, _MNIST_FILES)
    for row, rel in zip(list(rows), _MNIST_FILES, strict=True):
        if row.status != "present":
            continue
        prefix, kind = os.path.basename(rel).split("-", 1)
        with open(row.item, "rb") as f:
            header = f.read(8)
        magic, n = (int.from_bytes(header[i:i + 4], "big") for i in (0, 4)) if len(header) == 8 else (0, 0)
        expected = _MNIST_SIZES[prefix]
        header_bytes, per_sample = _IDX_BYTES[kind]
        if magic != _IDX_MAGIC[kind]:
            rows.append(CheckLine(dataset, rel, "corrupt", f"not an idx file (magic {magic})"))
        elif os.path.getsize(row.item) < header_bytes + n * per_sample:
            rows.append(CheckLine(dataset, rel, "corrupt", f"truncated: {n} samples declared, "
                                                           f"{os.path.getsize(row.item)} bytes"))
        else:
            rows.append(CheckLine(dataset, rel, "present" if n >= expected else "incomplete",
                                  f"{n} samples (expected {expected})"))
    return rows


def check_mtil_dataset(name: str, root: str) -> list[CheckLine]:
    """Rows for one MTIL dataset in its torchvision layout."""
    ds = f"mtil/{name}"
    if name == "CIFAR100":
        return check_cifar100(root, ds)
    if name == "MNIST":
        return check_mnist(root, ds)
    folder, expected, files = _MTIL_LAYOUT[name]
    rows = check_files(ds, root, files)
    img_rows = check_images(ds, os.path.join(root, folder), expected,
                            exclude=("BACKGROUND_Google",) if name == "Caltech101" else ())
    if name in _CLASS_FOLDERS:
        rows += check_class_folders(ds, os.path.join(root, _CLASS_FOLDERS[name]), _expected_classes(name),
                                    exclude=("BACKGROUND_Google",))
    if name == "Caltech101" and os.path.isdir(os.path.join(root, folder)):
        n = len([d for d in os.listdir(os.path.join(root, folder)) if d != "BACKGROUND_Google"])
        rows.append(CheckLine(ds, "categories", "present" if n == 101 else "corrupt", f"{n} (expected 101)"))
    return rows + img_rows


# MTIL datasets stored one folder per class: dataset -> that folder under the root
_CLASS_FOLDERS = {"Caltech101": "caltech101/101_ObjectCategories", "DTD": "dtd/dtd/images",
                  "EuroSAT": "eurosat/2750", "Food101": "food-101/images"}


def _expected_classes(name: str) -> list[str] | None:
    """The class folders a dataset must hold where the loader fixes them (EuroSAT's ten); else None:
    the folders present, each of which must hold an image."""
    if name == "EuroSAT":
        from .mtil import EUROSAT_FOLDERS

        return list(EUROSAT_FOLDERS)
    return None


def resolve_root(data_root: str | os.PathLike[str]) -> str:
    """The absolute data root: a relative ``data_root`` is relative to the working directory."""
    return os.path.abspath(os.path.expanduser(os.fspath(data_root)))


def stream_datasets(name: str, cfg: Any = None) -> list[str]:
    """The datasets a stream reads, in its order (MTIL: the order's selected datasets)."""
    if name == "mtil":
        from .mtil import MTILConfig
        from .mtil import stream_datasets as mtil_datasets

        return [f"mtil/{ds}" for ds in mtil_datasets(cfg if cfg is not None else MTILConfig())[0]]
    names = {"split_cifar100": "CIFAR100", "split_tinyimagenet": "TinyImageNet",
             "split_imagenet_r": "ImageNet-R", "synthetic": "synthetic"}
    if name not in names:
        raise ValueError(f"unknown stream {name!r}; known: split_cifar100, split_tinyimagenet, "
                         f"split_imagenet_r, mtil, synthetic")
    return [names[name]]


def check_dataset(dataset: str, data_root: str) -> list[CheckLine]:
    """Rows for one dataset as :func:`stream_datasets` names it (``CIFAR100``, ``mtil/EuroSAT``, ...)."""
    if dataset.startswith("mtil/"):
        return check_mtil_dataset(dataset.removeprefix("mtil/"), data_root)
    checks = {"CIFAR100": check_cifar100, "TinyImageNet": check_tinyimagenet, "ImageNet-R": check_imagenet_r}
    if dataset in checks:
        return checks[dataset](data_root)
    return [CheckLine("synthetic", "-", "present", "generated in memory, no files")]


def check_stream(name: str, data_root: str, cfg: Any = None) -> list[CheckLine]:
    """Present / incomplete / missing / corrupt rows for every dataset the stream reads.

    ``cfg``: the stream's options (MTIL: ``order`` and ``datasets`` say which datasets, in which
    order); ``None``: the stream's defaults.
    """
    return [row for ds in stream_datasets(name, cfg) for row in check_dataset(ds, data_root)]


def verdict_of(rows: list[CheckLine]) -> Verdict:
    """complete (all present), subset (some incomplete, none missing or corrupt), missing, corrupt."""
    statuses = {r.status for r in rows}
    if "corrupt" in statuses:
        return "corrupt"
    if "missing" in statuses or not rows:
        return "missing"
    return "subset" if "incomplete" in statuses else "complete"


def dataset_verdicts(lines: list[CheckLine]) -> dict[str, Verdict]:
    """``{dataset: verdict}`` in the order the datasets were checked."""
    by_dataset: dict[str, list[CheckLine]] = {}
    for line in lines:
        by_dataset.setdefault(line.dataset, []).append(line)
    return {ds: verdict_of(rows) for ds, rows in by_dataset.items()}


def overall_verdict(verdicts: dict[str, Verdict]) -> Verdict:
    """The most severe dataset verdict (corrupt > missing > subset > complete)."""
    return max(verdicts.values(), key=VERDICTS.index, default="missing")


def data_summary(name: str, data_root: str, cfg: Any = None) -> dict[str, Any]:
    """What a run's provenance records of its data: resolved root, overall and per-dataset verdicts."""
    verdicts = dataset_verdicts(check_stream(name, data_root, cfg))
    return {"root": resolve_root(data_root), "status": overall_verdict(verdicts), "datasets": verdicts}


_VERDICT_NOTES: dict[str, str] = {
    "complete": "official split sizes",
    "subset": "readable but smaller than the official splits; runs are allowed, marked 'subset', and "
              "not comparable with published numbers",
    "missing": "not usable: see `python -m runs data download`",
    "corrupt": "not usable: re-extract or re-download it",
}


def _verdict_detail(rows: list[CheckLine], verdict: Verdict) -> str:
    wanted: dict[Verdict, Status] = {"subset": "incomplete", "missing": "missing", "corrupt": "corrupt"}
    if verdict == "complete":
        return _VERDICT_NOTES["complete"]
    first = next(r for r in rows if r.status == wanted[verdict])
    return first.detail if verdict == "subset" else f"{first.item}: {first.detail}"


def format_report(lines: list[CheckLine], data_root: str | None = None) -> str:
    """The rows as an aligned text table, a one-line count of row statuses, and one verdict per dataset.

    With ``data_root``, a first line names the resolved folder checked.
    """
    widths = [max([len(h)] + [len(str(getattr(r, h))) for r in lines]) for h in ("dataset", "item", "status")]
    header = "  ".join(h.ljust(w) for h, w in zip(("dataset", "item", "status"), widths, strict=True)) + "  detail"
    rows = [
        "  ".join(str(getattr(r, h)).ljust(w) for h, w in zip(("dataset", "item", "status"), widths, strict=True))
        + f"  {r.detail}"
        for r in lines
    ]
    counts = {s: sum(r.status == s for r in lines) for s in ("present", "incomplete", "missing", "corrupt")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    verdicts = dataset_verdicts(lines)
    width = max((len(ds) for ds in verdicts), default=0)
    verdict_lines = [f"{ds.ljust(width)}  {v.ljust(8)}  "
                     f"{_verdict_detail([r for r in lines if r.dataset == ds], v)}" for ds, v in verdicts.items()]
    overall = overall_verdict(verdicts)
    top = [f"data root: {resolve_root(data_root)}" + (f" (given as {data_root})" if not os.path.isabs(data_root)
                                                      else ""), ""] if data_root is not None else []
    return "\n".join([*top, header, *rows, "", summary, "", *verdict_lines, "",
                      f"stream data: {overall} ({_VERDICT_NOTES[overall]})"])
