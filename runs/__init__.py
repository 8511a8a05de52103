"""Suites: YAML schema, runner, metrics, W&B logging and reports. CLI: ``python -m runs --help``."""

from __future__ import annotations

import strategies._torchvision_compat  # noqa: F401  (before anything imports torchvision)
