"""MoE-Adapters (CVPR 2024): mixture-of-adapters units with a router per task, activate-freeze and the DDAS
autoencoder task selector (class-incremental and MTIL recipes; docs/methods/moe_adapters.md)."""

from .config import DDASConfig, MoEAdaptersConfig
from .plugin import MoEAdaptersPlugin
from .strategy import MoEAdapters, build_moe_adapters

__all__ = ["DDASConfig", "MoEAdapters", "MoEAdaptersConfig", "MoEAdaptersPlugin", "build_moe_adapters"]
