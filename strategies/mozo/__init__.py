"""MoZO: modality-aware zeroth-order / first-order hybrid optimisation of CLIP units."""

from .config import MoZOConfig
from .plugin import MoZOPlugin
from .strategy import MoZO, build_mozo

__all__ = ["MoZO", "MoZOConfig", "MoZOPlugin", "build_mozo"]
