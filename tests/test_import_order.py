"""A user's script does not depend on import order: ``import avalanche`` (or ``open_clip``,
``torchvision``) works as its first line in the installed environment (``clip_cl_torchvision_hook``).

Each check runs in a fresh interpreter of this environment (``sys.executable``), from a folder
outside the checkout so that only the installed package is importable.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PTH = "clip_cl_torchvision_hook.pth"
HAS_FINDER = "any(type(f).__name__ == 'TorchvisionShimFinder' for f in sys.meta_path)"


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_start_up_hook_is_installed_with_the_package():
    installed = [Path(d, PTH) for d in site.getsitepackages() if Path(d, PTH).is_file()]
    assert installed, (f"{PTH} is not in site-packages: reinstall the project "
                       f"(pip install -c constraints.txt -e '.[dev]')")
    assert installed[0].read_text() == (ROOT / PTH).read_text()


def test_start_up_costs_no_torch_import(tmp_path):
    result = _python(f"import sys; print('torch' in sys.modules, {HAS_FINDER})", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]  # the finder waits; torch is not imported


@pytest.mark.parametrize("module", ["torchvision", "avalanche", "open_clip"])
def test_third_party_import_works_as_the_first_line(module, tmp_path):
    result = _python(f"import {module}\nimport sys, torchvision.transforms\nprint({HAS_FINDER})", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False"]  # the finder removed itself at the first torchvision import
