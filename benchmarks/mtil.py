"""MTIL (multi-domain task-incremental learning, ZSCL's definition): one dataset per experience.

Order I: Aircraft, Caltech101, CIFAR100, DTD, EuroSAT, Flowers102, Food101, MNIST, OxfordPet,
StanfordCars, SUN397; order II: StanfordCars, Food101, MNIST, OxfordPet, Flowers102, SUN397,
Aircraft, Caltech101, DTD, EuroSAT, CIFAR100. Each experience has its own task label, class ids
are global (dataset k's classes follow dataset k-1's), and evaluation scores each dataset over its
own class names (``protocol="task"``).

Splits: the official train/test split where one exists (Aircraft trainval/test at the variant
level, CIFAR100 train/test, DTD partition 1 train/test, Flowers102 train/test, Food101 train/test,
MNIST train/test, OxfordPet trainval/test, StanfordCars train/test). Caltech101, EuroSAT and SUN397
have none: a random 80/20 split with seed 42, stratified by class (per class, in class-id order, a
``torch.randperm`` from one ``torch.Generator().manual_seed(42)``; the first ``int(0.8 n_c)`` train).
``shots=k`` keeps k training images per class (the first k, or k drawn with ``shot_seed``).

``datasets=[...]`` keeps only those datasets of the order, in the order's sequence (a subset while the
others download); a per-dataset lr table (``train.lr_by_experience``) may still name the others, whose
entries are then unused (``CLIPBenchmark.omitted_experiences``).

Datasets are opened only when they are selected, and only their annotation files / folder
listings are read at build time; image bytes are read when a sample is indexed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from strategies.options import COUNT, option

from .base import CLIPBenchmark, DatasetMissingError, StreamContext, fill_templates
from .common import CorruptImageError, clean_class_name
from .templates import check_mtil_choice, mtil_templates

log = logging.getLogger(__name__)

ORDER_I = ["Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers102", "Food101", "MNIST",
           "OxfordPet", "StanfordCars", "SUN397"]
ORDER_II = ["StanfordCars", "Food101", "MNIST", "OxfordPet", "Flowers102", "SUN397", "Aircraft",
            "Caltech101", "DTD", "EuroSAT", "CIFAR100"]

# CLIP's prompt names (zero-shot notebook) where torchvision's folder names read badly.
EUROSAT_NAMES = ["annual crop land", "forest", "brushland or shrubland", "highway or road",
                 "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
                 "residential buildings or homes or apartments", "river", "lake or sea"]
EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]
CALTECH101_NAMES = [
    "off-center face", "centered face", "leopard", "motorbike", "accordion", "airplane", "anchor", "ant",
    "barrel", "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha", "butterfly",
    "camera", "cannon", "side of a car", "ceiling fan", "cellphone", "chair", "chandelier",
    "body of a cougar cat", "face of a cougar cat", "crab", "crayfish", "crocodile", "head of a crocodile",
    "cup", "dalmatian", "dollar bill", "dolphin", "dragonfly", "electric guitar", "elephant", "emu",
    "euphonium", "ewer", "ferry", "flamingo", "head of a flamingo", "garfield", "gerenuk", "gramophone",
    "grand piano", "hawksbill", "headphone", "hedgehog", "helicopter", "ibis", "inline skate",
    "joshua tree", "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin",
    "mayfly", "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda",
    "pigeon", "pizza", "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone", "schooner",
    "scissors", "scorpion", "sea horse", "snoopy (cartoon beagle)", "soccer ball", "stapler", "starfish",
    "stegosaurus", "stop sign", "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch",
    "water lilly", "wheelchair", "wild cat", "windsor chair", "wrench", "yin and yang symbol",
]

# Where each dataset lives under the data root and what to put there by hand.
LAYOUT_HINTS: dict[str, str] = {
    "Aircraft": "<root>/fgvc-aircraft-2013b/data/{images/,variants.txt,images_variant_trainval.txt,...} "
                "(torchvision FGVCAircraft; archive fgvc-aircraft-2013b.tar.gz from the VGG site)",
    "Caltech101": "<root>/caltech101/101_ObjectCategories/<category>/*.jpg (torchvision Caltech101)",
    "CIFAR100": "<root>/cifar-100-python/{train,test,meta} (torchvision CIFAR100, python version)",
    "DTD": "<root>/dtd/dtd/{images/<class>/*.jpg,labels/train1.txt,labels/test1.txt} (torchvision DTD)",
    "EuroSAT": "<root>/eurosat/2750/<ClassName>/*.jpg (torchvision EuroSAT, RGB version)",
    "Flowers102": "<root>/flowers-102/{jpg/,imagelabels.mat,setid.mat} (torchvision Flowers102)",
    "Food101": "<root>/food-101/{images/<class>/*.jpg,meta/train.json,meta/test.json} (torchvision Food101)",
    "MNIST": "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (torchvision MNIST)",
    "OxfordPet": "<root>/oxford-iiit-pet/{images/*.jpg,annotations/trainval.txt,annotations/test.txt} "
                 "(torchvision OxfordIIITPet)",
    "StanfordCars": "<root>/stanford_cars/{cars_train/*.jpg,cars_test/*.jpg,cars_test_annos_withlabels.mat,"
                    "devkit/cars_meta.mat,devkit/cars_train_annos.mat}. torchvision's download link is dead: "
                    "take the images from the Kaggle mirror (jessicali9530/stanford-cars-dataset) and the "
                    "devkit + cars_test_annos_withlabels.mat from the Kaggle 'stanford cars devkit' / the "
                    "torchvision issue #7545 links, then arrange them as above",
    "SUN397": "<root>/SUN397/{ClassName.txt,<letter>/<class>/sun_*.jpg} (torchvision SUN397)",
}


@dataclass
class SourceSplit:
    """One dataset's train and test parts: base datasets, indices into them, local targets, names."""

    train: Any
    train_indices: list[int]
    train_targets: list[int]
    test: Any
    test_indices: list[int]
    test_targets: list[int]
    class_names: list[str]


class OffsetSubset(Dataset):
    """Samples ``indices`` of a base dataset as RGB PIL images with targets shifted by ``offset``."""

    def __init__(self, base: Any, indices: list[int], targets: list[int], offset: int) -> None:
        self.base = base
        self.indices = list(indices)
        self.targets = [int(t) + offset for t in targets]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        i = self.indices[index]
        try:
            img = self.base[i][0]
            return img.convert("RGB"), self.targets[index]  # MNIST / some Caltech images are grayscale
        except (OSError, SyntaxError) as error:  # PIL's decode errors name no file: name it
            raise CorruptImageError(f"{sample_name(self.base, i)}: the image does not decode ({type(error).__name__}: "
                                    f"{error}); re-extract or re-download the dataset (`python -m runs data check`)"
                                    ) from None


def sample_name(base: Any, index: int) -> str:
    """The file of sample ``index`` of a torchvision dataset, where it keeps a list of them (else
    '<dataset> sample <index>')."""
    for attr in ("samples", "imgs", "_samples", "_image_files", "_images", "_image_paths"):
        items = getattr(base, attr, None)
        if isinstance(items, list | tuple) and 0 <= index < len(items):
            item = items[index]
            return str(item[0] if isinstance(item, tuple | list) else item)
    if hasattr(base, "index") and hasattr(base, "y") and hasattr(base, "categories"):  # Caltech101
        category, number = base.categories[base.y[index]], base.index[index]
        return os.path.join(base.root, "101_ObjectCategories", category, f"image_{number:04d}.jpg")
    return f"{type(base).__name__} sample {index}"


def base_targets(ds: Any) -> list[int]:
    """Integer labels of a torchvision dataset without decoding images."""
    for attr in ("targets", "_labels", "y"):
        if hasattr(ds, attr):
            values = getattr(ds, attr)
            return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    if hasattr(ds, "_samples"):  # StanfordCars: [(path, label)]
        return [int(label) for _, label in ds._samples]
    raise TypeError(f"cannot read labels of {type(ds).__name__}")


def random_80_20(targets: list[int], seed: int = 42) -> tuple[list[int], list[int]]:
    """Stratified random 80/20 split: per class, a seeded permutation; the first ``int(0.8 n_c)`` train.

    Per class (not over the whole set) so every class keeps images on both sides, which Avalanche
    needs (each experience's test set must hold all its classes).
    """
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for pos, t in enumerate(targets):
        by_class.setdefault(t, []).append(pos)
    train, test = [], []
    for t in sorted(by_class):
        members = by_class[t]
        perm = torch.randperm(len(members), generator=gen).tolist()
        n_train = max(1, int(0.8 * len(members))) if len(members) > 1 else 1
        train += [members[i] for i in perm[:n_train]]
        test += [members[i] for i in perm[n_train:]]
    return sorted(train), sorted(test)


def _official(train: Any, test: Any, names: list[str]) -> SourceSplit:
    train_t, test_t = base_targets(train), base_targets(test)
    return SourceSplit(train, list(range(len(train_t))), train_t, test, list(range(len(test_t))), test_t,
                       names)


def _random(ds: Any, names: list[str], seed: int) -> SourceSplit:
    targets = base_targets(ds)
    tr, te = random_80_20(targets, seed)
    return SourceSplit(ds, tr, [targets[i] for i in tr], ds, te, [targets[i] for i in te], names)


def _load_aircraft(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import FGVCAircraft

    train = FGVCAircraft(root, split="trainval", annotation_level="variant", download=download)
    test = FGVCAircraft(root, split="test", annotation_level="variant", download=False)
    return _official(train, test, [clean_class_name(c) for c in train.classes])


def _load_caltech101(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import Caltech101

    ds = Caltech101(root, target_type="category", download=download)
    names = CALTECH101_NAMES if len(ds.categories) == len(CALTECH101_NAMES) else [
        clean_class_name(c) for c in ds.categories]
    return _random(ds, names, seed)


def _load_cifar100(root: str, download: bool, seed: int) -> SourceSplit:
    from .cifar100 import load_cifar100

    train, test = load_cifar100(root, download)
    return _official(train, test, [clean_class_name(c) for c in train.classes])


def _load_dtd(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import DTD

    train = DTD(root, split="train", partition=1, download=download)
    test = DTD(root, split="test", partition=1, download=False)
    return _official(train, test, [clean_class_name(c) for c in train.classes])


def _load_eurosat(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import EuroSAT

    ds = EuroSAT(root, download=download)
    names = EUROSAT_NAMES if list(ds.classes) == EUROSAT_FOLDERS else [
        clean_class_name(c) for c in ds.classes]
    return _random(ds, names, seed)


def _load_flowers102(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import Flowers102

    train = Flowers102(root, split="train", download=download)
    test = Flowers102(root, split="test", download=False)
    return _official(train, test, list(Flowers102.classes))


def _load_food101(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import Food101

    train = Food101(root, split="train", download=download)
    test = Food101(root, split="test", download=False)
    return _official(train, test, [clean_class_name(c) for c in train.classes])


def _load_mnist(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import MNIST

    train = MNIST(root, train=True, download=download)
    test = MNIST(root, train=False, download=False)
    return _official(train, test, [str(d) for d in range(10)])


def _load_oxford_pet(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import OxfordIIITPet

    train = OxfordIIITPet(root, split="trainval", download=download)
    test = OxfordIIITPet(root, split="test", download=False)
    return _official(train, test, [clean_class_name(c) for c in train.classes])


def _load_stanford_cars(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import StanfordCars

    train = StanfordCars(root, split="train", download=False)  # the official link is dead
    test = StanfordCars(root, split="test", download=False)
    return _official(train, test, [clean_class_name(c) for c in train.classes])


def _load_sun397(root: str, download: bool, seed: int) -> SourceSplit:
    from torchvision.datasets import SUN397

    ds = SUN397(root, download=download)
    return _random(ds, [clean_class_name(c.replace("/", " ")) for c in ds.classes], seed)


# name -> loader(root, download, split_seed); tests monkeypatch entries of this table.
LOADERS: dict[str, Callable[[str, bool, int], SourceSplit]] = {
    "Aircraft": _load_aircraft, "Caltech101": _load_caltech101, "CIFAR100": _load_cifar100,
    "DTD": _load_dtd, "EuroSAT": _load_eurosat, "Flowers102": _load_flowers102, "Food101": _load_food101,
    "MNIST": _load_mnist, "OxfordPet": _load_oxford_pet, "StanfordCars": _load_stanford_cars,
    "SUN397": _load_sun397,
}


@dataclass
class MTILConfig:
    order: str | list[str] = option("I", "\"I\", \"II\" or an explicit list of dataset names")
    shots: int | None = option(None, "keep k training images per class (5 for few-shot MTIL); None: all",
                               range=COUNT)
    shot_seed: int | None = option(None, "None: the first k per class; an int: k drawn with this seed")
    split_seed: int = option(42, "seed of the 80/20 split of Caltech101, EuroSAT, SUN397")
    train_templates: str = option("first", "training prompts per dataset: \"first\" (official) or \"all\" its "
                                  "templates")
    eval_templates: str = option("all", "evaluation / prototype prompts per dataset: \"all\" (official) or "
                                 "\"first\"")
    datasets: list[str] | None = option(
        None, "only these datasets of the order, kept in the order's sequence (e.g. [EuroSAT, Caltech101] "
              "while the others download); the lr table's entries of the others are unused; None: all")


def resolve_order(order: str | list[str]) -> list[str]:
    """Dataset names of an order spec, checked against the loaders."""
    names = {"I": ORDER_I, "II": ORDER_II}.get(order) if isinstance(order, str) else order
    if names is None or not isinstance(names, list) or not names:
        raise ValueError(f"mtil: order {order!r} must be 'I', 'II' or a non-empty list of dataset names")
    unknown = [n for n in names if n not in LOADERS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"mtil: order has unknown or repeated datasets {unknown or names}; "
                         f"known: {sorted(LOADERS)}")
    return list(names)


def select_datasets(order: list[str], datasets: list[str] | None) -> list[str]:
    """The datasets of ``order`` named in ``datasets``, in the order's sequence (``None``: all of them)."""
    if datasets is None:
        return list(order)
    if not isinstance(datasets, list) or not datasets:
        raise ValueError(f"datasets = {datasets!r}: must be a non-empty list of dataset names of the order, "
                         f"or null for all; allowed: {', '.join(order)}")
    unknown = [n for n in datasets if n not in order]
    if unknown:
        raise ValueError(f"datasets = {datasets!r}: {', '.join(map(repr, unknown))} not in the order; "
                         f"allowed: {', '.join(order)}")
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"datasets = {datasets!r}: a dataset is named twice")
    return [name for name in order if name in datasets]


def stream_datasets(cfg: MTILConfig) -> tuple[list[str], list[str]]:
    """(selected datasets in the order's sequence, the order's datasets the selection leaves out)."""
    order = resolve_order(cfg.order)
    selected = select_datasets(order, cfg.datasets)
    return selected, [name for name in order if name not in selected]


def select_shots(targets: list[int], shots: int, seed: int | None) -> list[int]:
    """Positions of ``shots`` samples per class: the first ones, or a seeded draw."""
    by_class: dict[int, list[int]] = {}
    for pos, t in enumerate(targets):
        by_class.setdefault(t, []).append(pos)
    rng = np.random.RandomState(seed) if seed is not None else None
    keep: list[int] = []
    for t in sorted(by_class):
        members = by_class[t]
        if rng is not None:
            members = sorted(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
        keep += members[:shots]
    return sorted(keep)


def load_source(name: str, root: str, download: bool, split_seed: int) -> SourceSplit:
    """One dataset through its loader; absent data becomes one ``DatasetMissingError``."""
    try:
        return LOADERS[name](root, download, split_seed)
    except DatasetMissingError as err:
        raise DatasetMissingError(f"mtil/{name}: {err}") from err
    except (RuntimeError, OSError) as err:  # torchvision "Dataset not found", failed downloads
        raise DatasetMissingError(
            f"mtil/{name}: dataset not found under {root} and download is off or failed "
            f"({type(err).__name__}). Expected layout: {LAYOUT_HINTS[name].replace('<root>', root)}") from err


def check_mtil(cfg: MTILConfig) -> list[str]:
    """What can be checked without data (order, selection, shots); returns the selected datasets in order."""
    order, _ = stream_datasets(cfg)
    if cfg.shots is not None and (not isinstance(cfg.shots, int) or cfg.shots <= 0):
        raise ValueError(f"mtil: shots={cfg.shots!r} must be a positive int or None")
    check_mtil_choice(cfg.train_templates, "mtil: train_templates")
    check_mtil_choice(cfg.eval_templates, "mtil: eval_templates")
    return order


def build_mtil(cfg: MTILConfig, ctx: StreamContext) -> CLIPBenchmark:
    """MTIL: one experience (and task label) per dataset, global class ids, per-dataset prompts."""
    from avalanche.benchmarks import nc_benchmark

    order = check_mtil(cfg)
    omitted = stream_datasets(cfg)[1]
    trains: list[OffsetSubset] = []
    tests: list[OffsetSubset] = []
    names: list[str] = []
    prompts: list[list[str]] = []
    train_prompts: list[list[str]] = []
    exp_classes: list[list[int]] = []
    for name in order:
        src = load_source(name, ctx.data_root, ctx.download, cfg.split_seed)
        offset = len(names)
        tr_idx, tr_t = src.train_indices, src.train_targets
        if cfg.shots is not None:
            keep = select_shots(tr_t, cfg.shots, cfg.shot_seed)
            tr_idx, tr_t = [tr_idx[k] for k in keep], [tr_t[k] for k in keep]
        trains.append(OffsetSubset(src.train, tr_idx, tr_t, offset))
        tests.append(OffsetSubset(src.test, src.test_indices, src.test_targets, offset))
        names += src.class_names
        prompts += fill_templates(mtil_templates(name, first_only=cfg.eval_templates == "first"), src.class_names)
        train_prompts += fill_templates(mtil_templates(name, first_only=cfg.train_templates == "first"),
                                        src.class_names)
        exp_classes.append(list(range(offset, offset + len(src.class_names))))
    scenario = nc_benchmark(
        trains, tests, n_experiences=len(order), task_labels=True, shuffle=False, one_dataset_per_exp=True,
        class_ids_from_zero_in_each_exp=False, train_transform=ctx.train_transform,
        eval_transform=ctx.eval_transform,
    )
    got = [sorted(e.classes_in_this_experience) for e in scenario.train_stream]
    for name, want, have in zip(order, exp_classes, got, strict=True):
        if want != have:
            raise DatasetMissingError(f"mtil/{name}: its training split lacks {len(set(want) - set(have))} "
                                      f"of its {len(want)} classes; the data under {ctx.data_root} "
                                      f"is incomplete")
    bench = CLIPBenchmark(name="mtil", scenario=scenario, class_names=names, class_prompts=prompts,
                          experience_classes=exp_classes, protocol="task", experience_names=list(order),
                          train_prompts=train_prompts, omitted_experiences=omitted)
    return bench
