"""Merging baselines next to ConDU: Task Arithmetic, TIES-Merging and MagMax (docs/methods/merging.md)."""

from .config import MagMaxConfig, TaskArithmeticConfig, TIESConfig
from .plugin import MergingPlugin
from .strategy import TIES, MagMax, TaskArithmetic, build_merging

__all__ = ["TIES", "MagMax", "MagMaxConfig", "MergingPlugin", "TIESConfig", "TaskArithmetic",
           "TaskArithmeticConfig", "build_merging"]
