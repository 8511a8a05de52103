"""Start-up hook: makes ``import torchvision`` (hence avalanche, open_clip, timm) work first thing.

Installed with the package as ``clip_cl_torchvision_hook.pth`` (see ``setup.py``), whose one line
runs :func:`install` when Python starts. That puts a finder at the front of ``sys.meta_path`` which
does nothing until the first ``import torchvision``: then it removes itself and loads
``strategies._torchvision_compat`` (by path: not the package's ``__init__``, which imports the
methods, hence avalanche), which declares torchvision's two fake-kernel operator schemas only when
torchvision's C extension cannot load (the CPU torch next to PyPI's CUDA torchvision), and returns
``None`` so the normal import proceeds. Start-up cost: this module (standard library only, torch is
not imported) and one string comparison per import until torchvision is imported; on a matching
torch/torchvision pair (any CUDA install) the shim finds the extension and does nothing.
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
            _load_shim()
        except ImportError:  # the project is not importable (e.g. uninstalled): plain torchvision import
            pass
        return None  # let the regular finders import torchvision


def _load_shim() -> None:
    """Import ``strategies._torchvision_compat`` without running ``strategies/__init__``: the package
    imports its methods (hence avalanche, hence torchvision), which must not happen in the middle of
    the import of torchvision or avalanche that called this finder."""
    if "strategies._torchvision_compat" in sys.modules:
        return
    from importlib.util import find_spec, module_from_spec, spec_from_file_location

    package = find_spec("strategies")  # finds the package without importing it
    if package is None or not package.submodule_search_locations:
        raise ImportError("strategies is not importable")
    path = f"{list(package.submodule_search_locations)[0]}/_torchvision_compat.py"
    spec = spec_from_file_location("strategies._torchvision_compat", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module at {path}")
    module = module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise


def install() -> None:
    """Put the finder first in ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, TorchvisionShimFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionShimFinder())


def uninstall() -> None:
    """Remove the finder from ``sys.meta_path``."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TorchvisionShimFinder)]
