"""RAIL: regression-based analytic incremental learning of CLIP (primal and dual), training-free."""

from .config import RAILConfig
from .plugin import RAILPlugin
from .strategy import RAIL, build_rail

__all__ = ["RAIL", "RAILConfig", "RAILPlugin", "build_rail"]
