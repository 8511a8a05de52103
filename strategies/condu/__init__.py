"""ConDU: continual decoupling-unifying of CLIP by model fusion, with prototype aggregation."""

from .config import ConDUConfig
from .plugin import ConDUPlugin
from .strategy import ConDU, build_condu

__all__ = ["ConDU", "ConDUConfig", "ConDUPlugin", "build_condu"]
