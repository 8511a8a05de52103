"""Installs ``clip_cl_torchvision_hook.pth`` next to the packages, in wheels and editable installs.

Everything else about the package is in ``pyproject.toml``. The ``.pth`` file runs
``clip_cl_torchvision_hook.install()`` at interpreter start-up, so ``import avalanche`` (or
``open_clip``, ``torchvision``) works as the first line of a script on the CPU install (see that
module). A ``.pth`` file only takes effect at the root of ``site-packages``: ``build_py`` copies it
to the wheel's root, and ``editable_wheel`` (``pip install -e``, which does not run ``build_py``
into the wheel) adds it to the editable wheel. Tested by ``tests/test_import_order.py``.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "clip_cl_torchvision_hook.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(PTH, str(Path(self.build_lib, PTH)), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, str(Path(self.build_lib, PTH))]


class EditableWheelWithPth(editable_wheel):
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):  # noqa: ANN001, ANN202
        # setuptools' step that fills the unpacked editable wheel (written, with its RECORD, after it)
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        self.copy_file(PTH, str(Path(unpacked_wheel, PTH)), preserve_mode=False)
        return result


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
