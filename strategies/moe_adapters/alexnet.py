"""DDAS's frozen feature extractor: torchvision's AlexNet up to conv5 (``features[:-2]``: the last ReLU and
max-pool dropped), 256×13×13 at 224 px (MoE-Adapters ``mtil/src/models/AutoEncoder.py::Alexnet_FE``).

The ImageNet weights come from torchvision's own download into torch.hub's cache
(``<torch.hub.get_dir()>/checkpoints``). Offline (``HF_HUB_OFFLINE=1``, the toolkit's offline switch) and
not cached, :func:`weights_problem` says so before any work (``runs.machine`` reports it, exit 2), and
:func:`build_feature_extractor` raises :class:`~strategies.clip.WeightsUnavailableError` with the same
message. ``pretrained="none"`` gives a randomly initialised AlexNet, drawn from its own seed so the run's
random stream is not touched (tests and tiny suites; results marked like random CLIP weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..clip import WeightsUnavailableError

FEATURE_SHAPE = (256, 13, 13)  # conv5 output at 224 px
RANDOM_SEED = 0  # the random AlexNet's weights (pretrained: none)


def _weights():  # noqa: ANN202  (torchvision's enum; imported late: torchvision is slow to import)
    from torchvision.models import AlexNet_Weights

    return AlexNet_Weights.IMAGENET1K_V1


def cached_weights_path() -> Path:
    """Where torchvision's download of the AlexNet ImageNet weights is (or will be) cached."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_weights().url)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"


def weights_problem() -> str | None:
    """The one message when the AlexNet weights are not cached and downloading is off; else None."""
    path = cached_weights_path()
    if path.is_file() or not offline():
        return None
    return (f"method.ddas.pretrained = 'imagenet': torchvision's AlexNet weights are not cached at {path} and "
            f"HF_HUB_OFFLINE=1 forbids downloading them ({_weights().url}); run once online, copy the file "
            f"there, or set method.ddas.pretrained: none (a random AlexNet: not paper results)")


def build_feature_extractor(pretrained: str, device: torch.device | str = "cpu") -> nn.Module:
    """AlexNet ``features[:-2]``, frozen, in eval mode, on ``device``."""
    from torchvision.models import alexnet

    if pretrained == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = alexnet(weights=None)
    else:
        problem = weights_problem()
        if problem:
            raise WeightsUnavailableError(problem)
        try:
            model = alexnet(weights=_weights())
        except (OSError, RuntimeError) as error:  # urllib's URLError is an OSError
            raise WeightsUnavailableError(
                f"method.ddas.pretrained = 'imagenet': torchvision could not download the AlexNet weights "
                f"({error}); run once online or set method.ddas.pretrained: none") from None
    extractor = nn.Sequential(*list(model.features.children())[:-2])
    extractor.requires_grad_(False)
    return extractor.eval().to(device)
