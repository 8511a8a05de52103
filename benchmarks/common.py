"""Pieces shared by the stream builders: class orders and step sizes, the class-incremental
benchmark over global class ids, class-name cleaning, lazily-opened image files, downloads."""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Callable

import numpy as np
from torch.utils.data import Dataset

from .base import CLIPBenchmark, DatasetMissingError, StreamContext, fill_templates

log = logging.getLogger(__name__)


def resolve_class_order(spec: str | int | list[int], n_classes: int, published: list[int] | None,
                        stream: str) -> list[int]:
    """Class order from a config value.

    ``"seed1993"``: the published order (``published``); ``"identity"``: ``0..n-1``; an int: the
    permutation ``np.random.RandomState(seed).permutation(n)``; a list: taken as is. Every form must
    be a permutation of ``0..n-1``.
    """
    if isinstance(spec, bool):
        raise TypeError(f"{stream}: class_order must be 'seed1993', 'identity', an int seed or a list")
    if spec == "seed1993":
        if published is None:
            raise ValueError(f"{stream}: no published 'seed1993' order; use 'identity', a seed or a list")
        order = list(published)
    elif spec == "identity":
        order = list(range(n_classes))
    elif isinstance(spec, int):
        order = np.random.RandomState(spec).permutation(n_classes).tolist()
    elif isinstance(spec, list | tuple):
        order = [int(c) for c in spec]
    else:
        raise ValueError(f"{stream}: class_order {spec!r} is not 'seed1993', 'identity', "
                         f"an int seed or a list")
    if sorted(order) != list(range(n_classes)):
        raise ValueError(f"{stream}: class_order must be a permutation of 0..{n_classes - 1} "
                         f"(got {len(order)} entries)")
    return order


def step_sizes(n_classes: int, initial: int, increment: int, stream: str) -> list[int]:
    """Classes per experience: ``initial`` then ``increment`` each, tiling exactly ``n_classes``."""
    if initial <= 0 or increment <= 0:
        raise ValueError(f"{stream}: initial={initial} and increment={increment} must be positive")
    if initial > n_classes or (n_classes - initial) % increment:
        raise ValueError(f"{stream}: initial={initial} + k*increment={increment} does not tile "
                         f"{n_classes} classes")
    return [initial] + [increment] * ((n_classes - initial) // increment)


def build_class_incremental(name: str, train, test, order: list[int], sizes: list[int],
                            class_names: list[str], templates: tuple[list[str], list[str]],
                            ctx: StreamContext) -> CLIPBenchmark:
    """An Avalanche class-incremental benchmark over global class ids, with (training, evaluation) prompts."""
    from avalanche.benchmarks import nc_benchmark

    scenario = nc_benchmark(
        train, test, n_experiences=len(sizes), task_labels=False, shuffle=False,
        fixed_class_order=order, per_exp_classes={0: sizes[0]} if sizes[0] != sizes[-1] else None,
        train_transform=ctx.train_transform, eval_transform=ctx.eval_transform,
    )
    return CLIPBenchmark(
        name=name,
        scenario=scenario,
        class_names=class_names,
        class_prompts=fill_templates(templates[1], class_names),
        train_prompts=fill_templates(templates[0], class_names),
        experience_classes=[sorted(e.classes_in_this_experience) for e in scenario.train_stream],
        protocol="seen",
    )


def clean_class_name(name: str) -> str:
    """Prompt-ready name: underscores to spaces ("aquarium_fish" -> "aquarium fish")."""
    return " ".join(name.replace("_", " ").split())


class ImageFileDataset(Dataset):
    """Image files with integer targets; each image is opened (RGB) only when indexed."""

    def __init__(self, paths: list[str], targets: list[int]) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return open_rgb(self.paths[index]), self.targets[index]


class CorruptImageError(ValueError):
    """An image file does not decode (truncated, not an image); the message names the file."""


def open_rgb(path: str):
    """The image at ``path`` as a decoded RGB PIL image; a file that does not decode raises
    :class:`CorruptImageError` naming it (PIL's own error names no file)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            rgb.load()
            return rgb
    except (OSError, ValueError, SyntaxError) as error:  # PIL's decode errors (a truncated JPEG: OSError)
        raise CorruptImageError(f"{path}: the image does not decode ({type(error).__name__}: {error}); re-extract "
                                f"or re-download the dataset (`python -m runs data check` lists the bad files)"
                                ) from None


def download_and_extract(url: str, dest_dir: str) -> None:
    """Download ``url`` into ``dest_dir`` with a tqdm progress bar, extract (zip/tar), delete the archive."""
    from tqdm import tqdm

    os.makedirs(dest_dir, exist_ok=True)
    archive = os.path.join(dest_dir, os.path.basename(url))
    partial = archive + ".part"
    with urllib.request.urlopen(url) as response, open(partial, "wb") as out:  # noqa: S310 (fixed URL)
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(url)) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    shutil.move(partial, archive)
    log.info("extracting %s", archive)
    if archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest_dir)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest_dir, filter="data")
    os.remove(archive)


def ensure_downloaded(folder: str, is_complete: Callable[[str], bool], url: str, root: str, download: bool,
                      missing: DatasetMissingError) -> str:
    """``folder`` if complete; else download ``url`` into ``root`` when allowed; else raise ``missing``."""
    if is_complete(folder):
        return folder
    if not download:
        raise missing
    try:
        download_and_extract(url, root)
    except OSError as err:  # URLError is an OSError
        raise missing from err
    if not is_complete(folder):
        raise missing
    return folder
