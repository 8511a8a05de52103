"""Make ``import torchvision`` work with a CPU-only torch and a CUDA-built torchvision wheel.

PyPI has no CPU build of torchvision 0.28 (the only release matching torch 2.13). Its C extension
links to CUDA libraries, so next to the CPU torch it cannot load, and torchvision's import then
fails in ``_meta_registrations`` (``operator torchvision::nms does not exist``). When, and only when,
the extension cannot load, this module declares the two operator schemas that torchvision registers
fake kernels for at import time. PIL transforms, datasets and models work; ``torchvision.ops``
kernels (NMS, RoI) do not, and this project uses none of them. With a matching torch/torchvision
pair (any GPU install) the extension loads and this module does nothing.

It must run before torchvision is imported. The installed package does that for every script:
``clip_cl_torchvision_hook.pth`` (installed by ``setup.py``, editable installs included) runs the
module of that name at start-up, whose finder imports this module just before the first ``import
torchvision`` — so ``import avalanche`` / ``open_clip`` / ``torchvision`` may be a script's first
line. Every package of this project also imports it in its ``__init__`` (a source checkout that is
not installed).
"""

from __future__ import annotations

import glob
import importlib.util
import os

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None  # kept alive: the schemas live as long as it does


def _extension_loads() -> bool:
    """True when torchvision's compiled ``_C`` extension loads (or torchvision is absent)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True
    for location in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(location, "_C*.so")) + glob.glob(os.path.join(location, "_C*.pyd")):
            try:
                torch.ops.load_library(path)
                return True
            except (OSError, RuntimeError):
                return False
    return False


def ensure_torchvision_importable() -> None:
    """Declare torchvision's fake-kernel operator schemas when its C extension cannot load."""
    global _library
    if _library is not None or hasattr(torch.ops.torchvision, "nms") or _extension_loads():
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


ensure_torchvision_importable()
