"""RAIL's closed-form maths (Xu et al., "Advancing Cross-domain Discriminability in Continual Learning of
Vision-Language Models", NeurIPS 2024; docs/methods/rail.md). Pure torch: no Avalanche, no CLIP.

Notation: f (B, D) L2-normalised frozen CLIP image features, Y (B, C) one-hot targets over the global
class ids, λ the ridge weight.

- **Primal RAIL** (paper, Theorem 1 — the primal form): a frozen random projection h = ReLU(P f), P (d, D) drawn once
  from a seeded generator (d = 15000), and a ridge classifier W (d, C) = (Σ HᵀH + λI)⁻¹ Σ HᵀY updated
  experience by experience by recursive least squares (RLS, Woodbury identity) — equal to the joint ridge
  solution on all data seen (the paper's "absolute memorization").
- **Dual RAIL** (paper, Theorem 2 — the dual form): kernel ridge regression with the RBF kernel
  k(x, x') = exp(−γ‖x − x'‖²), α = (K + λI)⁻¹ Y over every stored training feature, scores k(f, X) α.
- **Fusion** (the paper's training-free fusion module): zero-shot probabilities p = softmax(zero-shot
  logits); where the zero-shot arg-max is a class the adapter was fit on, the prediction is
  (1 − w)·p + w·s_adapter (w = 0.8), else p.

Every solve runs in float64 on the device of its inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64
F64_BYTES = 8


# ---- primal: frozen random projection ------------------------------------------------------------
def random_projection(dim: int, width: int, seed: int, *, device: torch.device | str = "cpu") -> Tensor:
    """P (width, dim), float64: ``nn.Linear(dim, width, bias=False)``'s default init U(−1/√dim, 1/√dim)
    (primal_RAIL.py's expansion layer), drawn from a CPU generator seeded with ``seed`` so the same seed
    gives the same P on every device. Never updated (the paper's randomly-initialised hidden layer is frozen)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    weights = (torch.rand(width, dim, generator=gen, dtype=F64) * 2.0 - 1.0) * bound  # (d, D)
    return weights.to(device)


def expand(features: Tensor, projection: Tensor) -> Tensor:
    """h = ReLU(P f): (B, D) features -> (B, d) float64 hidden activations (paper, Theorem 1)."""
    return torch.relu(features.to(projection) @ projection.t())  # (B, d)


# ---- primal: ridge regression by recursive least squares -----------------------------------------
def rls_init(width: int, classes: int, ridge: float, *, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(R, W) before any data: R = (λI)⁻¹ (d, d), W = 0 (d, C), float64. RLS from here gives the ridge
    solution (the official code computes R₀ = (H₀ᵀH₀ + λI)⁻¹ by inversion on the first task, the same
    matrix in exact arithmetic)."""
    if ridge <= 0:
        raise ValueError(f"ridge λ must be > 0, got {ridge}")
    r = torch.eye(width, dtype=F64, device=device) / ridge  # (d, d)
    return r, torch.zeros(width, classes, dtype=F64, device=device)


def rls_update(r: Tensor, w: Tensor, hidden: Tensor, targets: Tensor) -> None:
    """One RLS block update, in place (paper, Theorem 1's recursive solution; Woodbury identity):

        S = I + H R Hᵀ,  G = R Hᵀ S⁻¹,  R ← R − G H R,  W ← W + G (Y − H W)

    with H (B, d) the block's hidden activations and Y (B, C) its targets. G = R_new Hᵀ, so this is the
    official ``w + R_new Hᵀ (Y − H w)`` with one product fewer. After any sequence of blocks,
    W = (Σ HᵀH + λI)⁻¹ Σ HᵀY (:func:`ridge_solution` on all blocks)."""
    h = hidden.to(r)
    rh = r @ h.t()  # (d, B)
    s = torch.eye(h.shape[0], dtype=r.dtype, device=r.device) + h @ rh  # (B, B), symmetric positive definite
    gain = torch.linalg.solve(s, rh.t()).t()  # (d, B) = R Hᵀ S⁻¹ (S symmetric)
    r.addmm_(gain, rh.t(), alpha=-1.0)  # R − G (H R); H R = (R Hᵀ)ᵀ since R is symmetric
    w.add_(gain @ (targets.to(w) - h @ w))  # (d, C)


def ridge_solution(hidden: Tensor, targets: Tensor, ridge: float) -> Tensor:
    """The joint ridge solution W = (HᵀH + λI)⁻¹ HᵀY on all data at once, float64 — the oracle RLS equals."""
    h, y = hidden.to(F64), targets.to(F64)
    gram = h.t() @ h + ridge * torch.eye(h.shape[1], dtype=F64, device=h.device)  # (d, d)
    return torch.linalg.solve(gram, h.t() @ y)  # (d, C)


# ---- dual: kernel ridge regression -----------------------------------------------------------------
def rbf_kernel(x: Tensor, y: Tensor, gamma: float) -> Tensor:
    """k(x, y) = exp(−γ‖x − y‖²), (N, M) float64 (utils.py ``kernel``; ‖x − y‖² expanded, clamped at 0)."""
    x, y = x.to(F64), y.to(device=x.device, dtype=F64)
    sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * x @ y.t()  # (N, M)
    return torch.exp(-gamma * sq.clamp_min_(0.0))


def kernel_ridge_fit(features: Tensor, targets: Tensor, ridge: float, gamma: float) -> Tensor:
    """α = (K + λI)⁻¹ Y with K = k(X, X) over every stored feature (paper, Theorem 2), float64, by a
    Cholesky solve (K + λI is symmetric positive definite for λ > 0). Peak memory: K and its factor,
    2·8·N² bytes (:func:`kernel_memory_bytes`). (N, C)"""
    if ridge <= 0:
        raise ValueError(f"ridge λ must be > 0, got {ridge}")
    gram = rbf_kernel(features, features, gamma)  # (N, N)
    gram.diagonal().add_(ridge)
    factor = torch.linalg.cholesky(gram)  # (N, N) lower triangular
    del gram
    return torch.cholesky_solve(targets.to(factor), factor)  # (N, C)


def kernel_ridge_scores(queries: Tensor, features: Tensor, alpha: Tensor, gamma: float) -> Tensor:
    """Adapter scores k(f, X) α (utils.py ``kernel_ridge_regression.predict``), float64. (B, C)"""
    return rbf_kernel(queries, features, gamma) @ alpha.to(F64)


def kernel_memory_bytes(n: int, dim: int, classes: int) -> int:
    """Bytes the dual variant holds for N stored features: the kernel and its Cholesky factor (2·8·N²) plus
    the features, targets and α in float64 (8·N·(D + 2C)). Grows with N²."""
    return 2 * F64_BYTES * n * n + F64_BYTES * n * (dim + 2 * classes)


# ---- fusion with zero-shot CLIP --------------------------------------------------------------------
def fuse(zero_shot_logits: Tensor, adapter_scores: Tensor, seen: Tensor, weight: float = 0.8) -> Tensor:
    """RAIL's prediction (the paper's fusion module; primal_RAIL.py / dual_RAIL.py evaluation loop):

        p = softmax(zero-shot logits);  out = (1 − w)·p + w·s  if argmax p ∈ seen,  else p

    ``zero_shot_logits`` (B, K) CLIP logits (masked classes at a very negative value get p = 0),
    ``adapter_scores`` (B, K) the raw regression scores (0 for classes never fit), ``seen`` (K,) bool: the
    classes the adapter was fit on. The scores are not normalised, as in the official code. (B, K) float32"""
    p = torch.softmax(zero_shot_logits.float(), dim=-1)  # (B, K)
    pick = seen.to(p.device)[p.argmax(dim=-1)]  # (B,) zero-shot arg-max is a seen class
    mixed = (1.0 - weight) * p + weight * adapter_scores.to(p)
    return torch.where(pick[:, None], mixed, p)
