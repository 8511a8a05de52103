"""The type checker runs on every package (``strategies/``, ``runs/``, ``benchmarks/``) and finds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_on_every_package(tmp_path):
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path),
                                *(str(ROOT / package) for package in ("strategies", "runs", "benchmarks"))])
    assert status == 0, out + err
