"""Continual-learning streams for CLIP, each an Avalanche benchmark plus class names and prompts.

``STREAMS`` maps a stream name (the ``stream.name`` of a suite YAML) to a :class:`StreamSpec`: its
config dataclass and its builder ``build(cfg, ctx: StreamContext) -> CLIPBenchmark``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import strategies._torchvision_compat  # noqa: F401  (before anything imports torchvision)

from .base import CLIPBenchmark, DatasetMissingError, StreamContext, fill_templates

__all__ = ["CLIPBenchmark", "DatasetMissingError", "StreamContext", "StreamSpec", "fill_templates", "STREAMS"]


class StreamSpec(NamedTuple):
    config: type  # the stream's option dataclass (YAML keys besides `name`)
    build: Callable[[Any, StreamContext], CLIPBenchmark]  # builds the benchmark
    check: Callable[[Any], Any] | None = None  # raises ValueError for options wrong without data (validate)


STREAMS: dict[str, StreamSpec] = {}


def _register() -> None:
    from . import synthetic

    STREAMS["synthetic"] = StreamSpec(synthetic.SyntheticStreamConfig, synthetic.build_synthetic,
                                    synthetic.check_synthetic)

    from . import cifar100, imagenet_r, mtil, tinyimagenet

    STREAMS["split_cifar100"] = StreamSpec(cifar100.SplitCIFAR100Config, cifar100.build_split_cifar100,
                                         cifar100.check_split_cifar100)
    STREAMS["split_tinyimagenet"] = StreamSpec(
        tinyimagenet.SplitTinyImageNetConfig,
        tinyimagenet.build_split_tinyimagenet,
        tinyimagenet.check_split_tinyimagenet,
    )
    STREAMS["split_imagenet_r"] = StreamSpec(imagenet_r.SplitImageNetRConfig, imagenet_r.build_split_imagenet_r,
                                           imagenet_r.check_split_imagenet_r)
    STREAMS["mtil"] = StreamSpec(mtil.MTILConfig, mtil.build_mtil, mtil.check_mtil)


_register()
