"""How well each reading of MoZO's vision constraint aligns the vision update with the true gradient.

CLI: ``python -m runs study align --arch clip-tiny-12l`` (and ``--arch ViT-B-16 --batch-size 4
--directions 10``; ``bench mozo-align`` is a deprecated alias). Random weights are enough: alignment is a
property of the estimator, not of accuracy.

Set-up per seed: a CLIP of the given size with MoE units (random init; up-projections and routers
drawn N(0, 0.02²) instead of zero, so that every unit parameter has a gradient), model in eval mode
(no dropout or router noise: the probes and the autograd gradient see one deterministic loss), a random
minibatch over 10 classes, MoZO's default units (dual branch, hop-even layers) and ε_l = 1e-3. The
autograd gradient g_v of the minibatch loss w.r.t. the vision ZO units is the reference.

For each direction z (the plugin's joint stream, vision block z_v) and each ε_v/ε_l:

- ``joint`` (the paper's literal reading): p = (L(θ + Dz) − L(θ − Dz)) / 2 over both towers, vision update
  d_v = sign(p)·z_v;
- ``scaled``: the same probe, d_v = (ε_v/ε_l)·sign(p)·z_v: the same direction as ``joint`` (so the same
  cosine, by construction) with a smaller step;
- ``per_tower``: p_v = (L(θ + ε_v z_v) − L(θ − ε_v z_v)) / 2 with the vision tower alone, d_v = sign(p_v)·z_v.

Equal compute, in full-model forward equivalents F = F_vision + F_language: per direction ``joint`` and
``scaled`` cost 2 F; ``per_tower`` costs 2 F_vision (vision probes, cached text features) + 2 F_language
(language probes, image features reused) = 2 F. The language probes do not change the vision update,
so they are not run here. Figures per reading, mean ± std over seeds:

- ``cos(K)``: cosine of the update summed over the K directions (a q = K estimate) with g_v;
- ``agreement``: mean per-direction cos(d_v, g_v) divided by the mean of the best a sign-normalised
  step along the same z can reach, |cos(z_v, g_v)|: 1 = every direction's vision step has the right sign,
  0 = no better than chance;
- ``step``: ‖d_v‖ / ‖z_v‖ (the vision step size relative to ``joint``'s).

Decision rule, fixed before measuring (docs/methods/mozo.md, "Vision perturbation"): a reading replaces ``joint`` as the
default only if its mean agreement at the default ε_v/ε_l = 0.5 exceeds ``joint``'s by ≥ 0.1 on both
the tiny 12-layer model and ViT-B/16 shapes, and its cos(K) is not lower on either.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import strategies  # noqa: F401  (torchvision shim before open_clip / avalanche)
from strategies.clip import CLIPClassifier, ModelConfig, UnitsConfig, build_clip, image_size
from strategies.mozo import MoZOConfig
from strategies.mozo.selector import select_zo_units
from strategies.mozo.zo import ZOGroup, directions, zo_estimate
from strategies.training import resolve_device

READINGS: tuple[str, ...] = ("joint", "scaled", "per_tower")
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EPS_LANGUAGE = 1e-3


@dataclass
class AlignmentRow:
    """Figures of one reading at one ε_v/ε_l, one value per seed."""

    reading: str
    ratio: float  # ε_v / ε_l
    cos_k: list[float] = field(default_factory=list)
    agreement: list[float] = field(default_factory=list)
    step: float = 1.0


@dataclass
class _Problem:
    """One seed's model, minibatch and MoZO's default ZO units split by tower (vision, language)."""

    model: CLIPClassifier
    x: torch.Tensor
    y: torch.Tensor
    vision: list[torch.Tensor]
    language: list[torch.Tensor]

    def loss(self) -> torch.Tensor:
        """The minibatch loss at the current θ (eval mode: deterministic), no graph."""
        with torch.no_grad():
            return nn.functional.cross_entropy(self.model(self.x), self.y)


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])


def _setup(arch: str, batch_size: int, seed: int, device: str) -> _Problem:
    """Random-init model with non-zero units, a minibatch, and MoZO's default partition (dual, hop-even)."""
    torch.manual_seed(seed)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind="moe")), device)
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for unit in model.units.values():
            for p in unit.parameters():
                if p.ndim == 2 and not p.abs().sum():  # zero-initialised up-projections and routers
                    p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02))
    model.eval()
    model.set_class_prompts([[f"a photo of a {name}."] for name in CLASS_NAMES])
    size = image_size(model)
    x = torch.randn(batch_size, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, len(CLASS_NAMES), (batch_size,), generator=gen).to(device)
    cfg = MoZOConfig()  # the paper's units: dual branch, hop-even layers
    keys = sorted(select_zo_units(model.units.keys(), cfg.branch, cfg.layers, one_based=cfg.one_based))
    tower: dict[str, list[torch.Tensor]] = {
        b: [p for k in keys if k[0] == b for p in model.units[k].parameters()] for b in ("vision", "language")}
    for t in tower["vision"] + tower["language"]:
        t.requires_grad_(False)  # ZO units live outside autograd, as under MoZOPlugin
    return _Problem(model, x, y, tower["vision"], tower["language"])


def _vision_gradient(problem: _Problem) -> torch.Tensor:
    params = problem.vision
    for p in params:
        p.requires_grad_(True)
    try:
        loss = nn.functional.cross_entropy(problem.model(problem.x), problem.y)
        # router noise weights are unused in eval mode: their gradient (and every probe's effect) is zero
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p in params:
            p.requires_grad_(False)
    return _flat([torch.zeros_like(p) if d is None else d for p, d in zip(params, grads, strict=True)])


def _seed_figures(problem: _Problem, ratios: Sequence[float], n_dirs: int,
                  seed: int) -> dict[tuple[str, float], tuple[float, float]]:
    """(cos(K), agreement) of every reading and ratio for one seed."""
    g = _vision_gradient(problem)
    full = problem.loss
    out: dict[tuple[str, float], tuple[float, float]] = {}
    for ratio in ratios:
        vision = ZOGroup("vision", problem.vision, EPS_LANGUAGE * ratio)
        groups = [vision, ZOGroup("language", problem.language, EPS_LANGUAGE)]
        sums = {r: torch.zeros_like(g) for r in ("joint", "per_tower")}
        cos = {r: 0.0 for r in ("joint", "per_tower")}
        oracle = 0.0
        for i in range(n_dirs):
            s = 1_000_003 * seed + i
            z_v = _flat(directions([vision], s))  # the vision block of the joint stream (vision comes first)
            p_joint = zo_estimate(groups, full, s, center_loss=False, rng_seed_for_model=0).projected[0]
            p_vision = zo_estimate([vision], full, s, center_loss=False, rng_seed_for_model=0).projected[0]
            zg = float(z_v @ g) / (float(z_v.norm()) * float(g.norm()))
            oracle += abs(zg)
            for reading, p in (("joint", p_joint), ("per_tower", p_vision)):
                sign = math.copysign(1.0, p) if p != 0 else 0.0
                sums[reading] += sign * z_v
                cos[reading] += sign * zg
        for reading in ("joint", "per_tower"):
            cos_k = float(sums[reading] @ g) / (float(sums[reading].norm()) * float(g.norm()) or 1.0)
            out[(reading, ratio)] = (cos_k, cos[reading] / oracle)
        out[("scaled", ratio)] = out[("joint", ratio)]  # same direction, step × ratio
    return out


def alignment_table(*, arch: str = "clip-tiny-12l", batch_size: int = 8, directions_per_seed: int = 50,
                    seeds: int = 5, ratios: Sequence[float] = (1.0, 0.5, 0.1), device: str = "cpu") -> str:
    """Markdown table of the readings' alignment (module docstring)."""
    if directions_per_seed < 1 or seeds < 1 or not ratios:
        raise ValueError("study align: directions, seeds and ratios must be >= 1 / non-empty")
    device = str(resolve_device(device))
    rows = {(r, q): AlignmentRow(r, q, step=q if r == "scaled" else 1.0) for q in ratios for r in READINGS}
    started = time.perf_counter()
    n_vision = 0
    for seed in range(seeds):
        problem = _setup(arch, batch_size, seed, device)
        n_vision = sum(p.numel() for p in problem.vision)
        for key, (cos_k, agreement) in _seed_figures(problem, ratios, directions_per_seed, seed).items():
            rows[key].cos_k.append(cos_k)
            rows[key].agreement.append(agreement)
    minutes = (time.perf_counter() - started) / 60
    header = (f"MoZO vision-update alignment: arch {arch} (random init, MoE units, dual hop-even, "
              f"{n_vision:,} vision ZO parameters), batch {batch_size}, {directions_per_seed} directions × "
              f"{seeds} seeds, ε_l = {EPS_LANGUAGE:g}, scalar sign, 2 full-forward equivalents per direction "
              f"for every reading; device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU "
              f"threads, {minutes:.1f} min.")
    lines = [header, "", "| reading | ε_v/ε_l | cos(K) with g_v | agreement | vision step |",
             "|---|---:|---:|---:|---:|"]
    for (reading, ratio), row in rows.items():
        lines.append(f"| {reading} | {ratio:g} | {_mean_std(row.cos_k)} | {_mean_std(row.agreement)} | "
                     f"{row.step:g} |")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def main(args: Any) -> str:
    """``python -m runs study align`` (``runs/__main__.py`` passes its parsed arguments)."""
    ratios = tuple(float(r) for r in str(args.ratios).split(","))
    return alignment_table(arch=args.arch, batch_size=args.batch_size, directions_per_seed=args.directions,
                           seeds=args.seeds, ratios=ratios, device=args.device)
