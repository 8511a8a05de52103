"""DDAS maths, pure torch (MoE-Adapters §3.3, "Distribution Discriminative Auto-Selector";
docs/methods/moe_adapters.md#ddas).

- Features: ``sigmoid(flatten(AlexNet conv5(x)))`` (:func:`ddas_features`), 43,264 values in (0, 1).
- One autoencoder per domain, ``Linear(43264→100) + ReLU``, ``Linear(100→43264) + Sigmoid``, trained on
  its domain's features with MSE (:class:`Autoencoder`), Adam, lr ``lr · decay^(epoch // every)``
  (:func:`autoencoder_lr`).
- Selection: per-sample reconstruction errors ``e[b, a] = mean((AE_a(f_b) − f_b)²)``
  (:func:`reconstruction_errors`); the domain is the arg-min over autoencoders, per sample or per batch
  (the batch's mean error, which is the official ``MSELoss`` over the batch). Domain 0 (when present) or a
  minimum above the threshold → frozen CLIP (route −1); domain d ≥ 1 → task d − 1's router
  (:func:`choose_routes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FROZEN = -1  # route of the images frozen CLIP answers


class Autoencoder(nn.Module):
    """``sigmoid(W₂ relu(W₁ f + b₁) + b₂)``, the DDAS autoencoder of one domain."""

    def __init__(self, input_dims: int, code_dims: int = 100) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(input_dims, code_dims), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code_dims, input_dims), nn.Sigmoid())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(features))


def ddas_features(extractor: nn.Module, images: torch.Tensor, size: int) -> torch.Tensor:
    """``sigmoid`` of the flattened feature map of ``images`` (B, 3, H, W), resized to ``size`` first when
    they differ (bilinear); (B, C·h·w) float32, no gradient."""
    with torch.no_grad():
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return torch.sigmoid(extractor(x).flatten(1))  # (B, 256·13·13)


def autoencoder_lr(step: int, batches_per_epoch: int, lr: float, decay: float, every: int) -> float:
    """``lr · decay^(epoch // every)`` with ``epoch = step // batches_per_epoch`` (official
    ``exp_lr_scheduler``)."""
    epoch = step // max(1, batches_per_epoch)
    return lr * decay ** (epoch // every)


def reconstruction_loss(autoencoder: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The training loss: MSE over the batch and every feature."""
    return F.mse_loss(autoencoder(features), features)


def reconstruction_errors(autoencoders: Sequence[nn.Module], features: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared reconstruction error of each autoencoder, (B, A)."""
    with torch.no_grad():
        return torch.stack([(ae(features) - features).pow(2).mean(dim=1) for ae in autoencoders], dim=1)


def choose_routes(errors: torch.Tensor, threshold: float, routing: str, domain0: bool) -> torch.Tensor:
    """Route per sample, (B,) int64: a task index, or :data:`FROZEN`.

    ``errors`` (B, A): column 0 is domain 0 when ``domain0``, the other columns tasks 0, 1, ...
    ``routing="batch"`` decides once from the batch's mean errors (every sample gets the same route).
    """
    if routing not in ("sample", "batch"):
        raise ValueError(f"routing {routing!r}; allowed: sample, batch")
    batch = errors.shape[0]
    decided = errors.mean(dim=0, keepdim=True) if routing == "batch" else errors  # (1, A) or (B, A)
    best_error, best = decided.min(dim=1)  # (1,) or (B,)
    offset = 1 if domain0 else 0
    frozen = (best < offset) | (best_error > threshold)
    routes = torch.where(frozen, torch.full_like(best, FROZEN), best - offset)
    return routes.expand(batch).clone()
