"""``runs data download``: fetch a stream's datasets where torchvision can, say how to get the others.

Fetchable (torchvision's dataset downloaders, which verify the archive's MD5 where torchvision
publishes one — every one here but FGVC-Aircraft): CIFAR-100 and the MTIL datasets Aircraft,
Caltech101, CIFAR100, DTD, EuroSAT, Flowers102, Food101, MNIST, OxfordPet. Each is fetched through the
stream's own loader with ``download=True``, so what lands on disk is what a run reads.

Not fetchable here (:data:`MANUAL`: source and expected layout printed): StanfordCars (torchvision's
link is dead), SUN397 (a very large archive, left to the user), ImageNet-R and
TinyImageNet (no torchvision downloader; the stream loaders fetch them without a checksum when a run
has ``download: true``).

Datasets already **complete** are left alone; a **subset** (e.g. a copy of ``../shared/data``) is
left alone too, with the folder to remove for the complete download. ``data_root`` is resolved like
``output_dir``: relative to the working directory (:func:`benchmarks.data_check.resolve_root`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .base import DatasetMissingError
from .data_check import check_dataset, resolve_root, stream_datasets, verdict_of

Outcome = Literal["present", "subset", "fetched", "failed", "manual"]
# MTIL datasets torchvision downloads (see the module docstring); the others are in MANUAL
MTIL_FETCHABLE = ("Aircraft", "Caltech101", "CIFAR100", "DTD", "EuroSAT", "Flowers102", "Food101", "MNIST",
                  "OxfordPet")


@dataclass(frozen=True)
class Manual:
    """Where a dataset comes from and how its files must lie under the data root."""

    source: str
    layout: str


@dataclass
class FetchResult:
    dataset: str  # as data_check names it: "CIFAR100", "mtil/EuroSAT", ...
    outcome: Outcome
    detail: str  # what was done, the error, or the manual steps


def _manual_table() -> dict[str, Manual]:
    from .imagenet_r import IMAGENET_R_URL
    from .mtil import LAYOUT_HINTS
    from .tinyimagenet import TINY_URL

    return {
        "TinyImageNet": Manual(f"{TINY_URL} (a run with download: true also fetches it, without a checksum)",
                               "<root>/tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images/*.JPEG,"
                               "val/images/*.JPEG,val/val_annotations.txt} (the zip, unzipped)"),
        "ImageNet-R": Manual(f"{IMAGENET_R_URL} (a run with download: true also fetches it, without a checksum); "
                             "the test split list ships with the project",
                             "<root>/imagenet-r/<wnid>/*.jpg (200 folders, 30,000 images: the tar, extracted)"),
        "mtil/StanfordCars": Manual("the mirrors named below, by hand (torchvision's download link is dead)",
                                    LAYOUT_HINTS["StanfordCars"]),
        "mtil/SUN397": Manual("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz (the archive "
                              "torchvision's SUN397 downloads, tens of GB; MD5 8ca2778205c41d23104230ba66911c7a)",
                              LAYOUT_HINTS["SUN397"] + ", the tar extracted"),
    }


def _fetch_mtil(name: str) -> Callable[[str], Any]:
    def fetch(root: str) -> Any:
        from .mtil import LOADERS

        return LOADERS[name](root, True, 42)  # the loader with download=True: torchvision's downloader

    return fetch


def _fetch_cifar100(root: str) -> Any:
    from .cifar100 import load_cifar100

    return load_cifar100(root, download=True)


# dataset -> fetch(root); tests replace torchvision's downloaders underneath, or entries here
FETCHERS: dict[str, Callable[[str], Any]] = {
    "CIFAR100": _fetch_cifar100, **{f"mtil/{name}": _fetch_mtil(name) for name in MTIL_FETCHABLE},
}


def instructions(dataset: str, root: str) -> str:
    """Source and expected layout of ``dataset`` under ``root`` (one line)."""
    from .mtil import LAYOUT_HINTS

    manual = _manual_table().get(dataset)
    if manual is None:
        name = dataset.removeprefix("mtil/")
        manual = Manual("torchvision's downloader (python -m runs data download)", LAYOUT_HINTS[name])
    return f"get it from {manual.source}; expected layout: {manual.layout.replace('<root>', root)}"


def fetch_dataset(dataset: str, data_root: str) -> FetchResult:
    """Leave a complete or subset dataset alone; fetch a missing / corrupt one if torchvision can."""
    root = resolve_root(data_root)
    before = verdict_of(check_dataset(dataset, root))
    if before == "complete":
        return FetchResult(dataset, "present", "complete: nothing to fetch")
    if before == "subset":
        return FetchResult(dataset, "subset", "a subset is present and left as is; for the complete dataset "
                                              "move its folder away and run again")
    fetch = FETCHERS.get(dataset)
    if fetch is None:
        return FetchResult(dataset, "manual", f"{before}; " + instructions(dataset, root))
    os.makedirs(root, exist_ok=True)
    try:
        fetch(root)
    except (OSError, RuntimeError, ValueError, DatasetMissingError) as err:  # network, checksum, layout
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        return FetchResult(dataset, "failed", f"{reason}; by hand: {instructions(dataset, root)}")
    after = verdict_of(check_dataset(dataset, root))
    if after in ("complete", "subset"):
        return FetchResult(dataset, "fetched", f"{after}, under {root}")
    return FetchResult(dataset, "failed", f"still {after} after the download (remove its folder and run again); "
                                          f"by hand: " + instructions(dataset, root))


def download_stream(name: str, data_root: str, cfg: Any = None) -> list[FetchResult]:
    """:func:`fetch_dataset` for every dataset the stream reads (MTIL: its order and selection)."""
    return [fetch_dataset(ds, data_root) for ds in stream_datasets(name, cfg)]


def format_downloads(results: list[FetchResult], data_root: str) -> str:
    """One line per dataset, the resolved root first and a count last."""
    width = max((len(r.dataset) for r in results), default=0)
    lines = [f"data root: {resolve_root(data_root)}", ""]
    lines += [f"{r.dataset.ljust(width)}  {r.outcome.ljust(7)}  {r.detail}" for r in results]
    counts = {o: sum(r.outcome == o for r in results) for o in ("present", "subset", "fetched", "failed", "manual")}
    return "\n".join([*lines, "", ", ".join(f"{n} {o}" for o, n in counts.items())])


def usable(results: list[FetchResult]) -> bool:
    """Every dataset is now on disk (complete or subset)."""
    return all(r.outcome in ("present", "subset", "fetched") for r in results)
