"""Continual-learning strategies for CLIP: the shared classifier, Avalanche baselines, MoZO, ConDU.

Importing the package registers every method in :data:`strategies.registry.METHODS` (the registry
is a leaf; each method module registers itself).
"""

from __future__ import annotations

from . import _torchvision_compat  # noqa: F401  (before anything imports torchvision)

# isort: split
from . import baselines, condu, merging, moe_adapters, mozo, rail, zscl  # noqa: F401  (each registers its methods)
