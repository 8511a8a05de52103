"""ZSCL and its family (LwF-CLIP, LwF-VR, WiSE-FT, WC, WE, iCaRL-CLIP, Continual-FT) on one trainer."""

from .config import PRESET_CONFIGS, PRESETS, ReferenceConfig, ZSCLConfig
from .plugin import ZSCLPlugin
from .strategy import ZSCL, build_zscl

__all__ = ["PRESETS", "PRESET_CONFIGS", "ReferenceConfig", "ZSCL", "ZSCLConfig", "ZSCLPlugin", "build_zscl"]
