"""Continual-learning streams for CLIP, each an Avalanche benchmark plus class names and prompts.

``STREAMS`` maps a stream name (the ``stream.name`` of a suite YAML) to its config dataclass and its
builder ``build(cfg, ctx: StreamContext) -> CLIPBenchmark``.
"""

from __future__ import annotations

import strategies._torchvision_compat  # noqa: F401  (before anything imports torchvision)

from .base import CLIPBenchmark, DatasetMissingError, StreamContext, fill_templates

__all__ = ["CLIPBenchmark", "DatasetMissingError", "StreamContext", "fill_templates", "STREAMS"]

STREAMS: dict[str, tuple[type, object]] = {}


def _register() -> None:
    from . import synthetic

    STREAMS["synthetic"] = (synthetic.SyntheticStreamConfig, synthetic.build_synthetic)

    from . import cifar100, imagenet_r, mtil, tinyimagenet

    STREAMS["split_cifar100"] = (cifar100.SplitCIFAR100Config, cifar100.build_split_cifar100)
    STREAMS["split_tinyimagenet"] = (tinyimagenet.SplitTinyImageNetConfig,
                                     tinyimagenet.build_split_tinyimagenet)
    STREAMS["split_imagenet_r"] = (imagenet_r.SplitImageNetRConfig, imagenet_r.build_split_imagenet_r)
    STREAMS["mtil"] = (mtil.MTILConfig, mtil.build_mtil)


_register()
