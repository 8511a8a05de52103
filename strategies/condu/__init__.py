"""ConDU: continual decoupling-unifying of CLIP by model fusion, with prototype aggregation."""

from .plugin import ConDUConfig, ConDUPlugin
from .strategy import ConDU, build_condu

__all__ = ["ConDU", "ConDUConfig", "ConDUPlugin", "build_condu"]
