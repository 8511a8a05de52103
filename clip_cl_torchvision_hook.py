"""Start-up hook: makes ``import torchvision`` (hence avalanche, open_clip, timm) work first thing.

Installed with the package as ``clip_cl_torchvision_hook.pth`` (see ``setup.py``), whose one line
runs :func:`install` when Python starts. That puts a finder at the front of ``sys.meta_path`` which
does nothing until the first ``import torchvision``: then it removes itself and imports
``strategies._torchvision_compat``, which declares torchvision's two fake-kernel operator schemas
only when torchvision's C extension cannot load (the CPU torch next to PyPI's CUDA torchvision),
and returns ``None`` so the normal import proceeds. Start-up cost: this module (standard library
only, torch is not imported) and one string comparison per import until torchvision is imported;
on a matching torch/torchvision pair (any CUDA install) the shim finds the extension and does
nothing.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would cost ~10 ms at every start-up
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType


class TorchvisionShimFinder:
    """Runs the torchvision shim once, just before torchvision is first imported (a ``sys.meta_path``
    finder: only ``find_spec`` is needed; the ABC is not imported, to keep start-up cheap)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != "torchvision":
            return None
        uninstall()  # first: the shim itself looks torchvision up
        try:
            import strategies._torchvision_compat  # noqa: F401  (declares the schemas where needed)
        except ImportError:  # the project is not importable (e.g. uninstalled): plain torchvision import
            pass
        return None  # let the regular finders import torchvision


def install() -> None:
    """Put the finder first in ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, TorchvisionShimFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionShimFinder())


def uninstall() -> None:
    """Remove the finder from ``sys.meta_path``."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchvisionShimFinder)]
