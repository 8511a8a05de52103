"""Continual-learning strategies for CLIP: the shared classifier, Avalanche baselines, MoZO, ConDU."""

from __future__ import annotations

from . import _torchvision_compat  # noqa: F401  (before anything imports torchvision)
