"""How faithful is a ZO probe under low precision? (``python -m runs study zo-precision``)

For ``directions`` random z ~ N(0, I) over every unit of both towers (MoZO's Dual ZO, per-group radii
D = diag(ε_g), ε_vision = ``eps_vision``, ε_language = ``eps_language``), on one random minibatch of a
random-init model with its units moved off the identity (``unit_scale``), it compares the two-sided
difference ``p = (L(θ + Dz) − L(θ − Dz)) / 2`` computed under a *probe setting* with the exact
directional derivative ``zᵀD∇L`` from autograd in fp32, and prints per setting the Pearson correlation
and the sign agreement (the fraction of directions where sign(p) = sign(zᵀD∇L): what a sign-normalised
ZO step needs). Settings (the ``--settings`` list):

- ``fp32``: no autocast;
- ``bf16`` / ``fp16``: the whole forward under ``torch.autocast`` of that dtype (the loss in fp32);
- ``bf16-units-fp32``: bf16 autocast with every unit's own arithmetic in fp32 (autocast disabled inside
  the units; their input cast to fp32), the frozen backbone in bf16;
- ``bf16-eps10``: bf16 autocast with both radii ×10 (the exact derivative is rescaled to match).

The model is in eval mode (no dropout or router noise), so the only difference between the two sides of
a probe is the perturbation. CPU autocast's op list differs from CUDA's: a GPU figure has to be measured
on a GPU (``--device cuda``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

import strategies  # noqa: F401  (torchvision shim before open_clip / avalanche)
from strategies.clip import ModelConfig, UnitsConfig, build_clip, image_size
from strategies.mozo.zo import ZOGroup, directions, perturb, restore
from strategies.training import resolve_device

SETTINGS: tuple[str, ...] = ("fp32", "bf16", "bf16-units-fp32", "bf16-eps10", "fp16")


@dataclass
class Agreement:
    setting: str
    correlation: float
    sign_agreement: float
    directions: int
    ms_per_probe: float


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


@contextlib.contextmanager
def _units_in_fp32(units: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Run every unit's forward with autocast off and its input in fp32 (output cast back)."""
    def pre(_m: torch.nn.Module | None, args: tuple) -> tuple:
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    originals = []
    for unit in units:
        forward = unit.forward
        originals.append((unit, forward))

        def wrapped(*args: torch.Tensor, _f=forward, **kw: torch.Tensor) -> torch.Tensor:
            dtype = args[0].dtype
            with torch.autocast(args[0].device.type, enabled=False):
                return _f(*pre(None, args), **kw).to(dtype)

        unit.forward = wrapped  # type: ignore[method-assign]
    try:
        yield
    finally:
        for unit, _ in originals:
            del unit.forward


def measure_agreement(*, arch: str = "clip-tiny-12l", units: str = "moe", batch_size: int = 32,
                      n_directions: int = 50, eps_vision: float = 5e-4, eps_language: float = 1e-3,
                      settings: Sequence[str] = SETTINGS, device: str = "cpu", seed: int = 0,
                      unit_scale: float = 0.02, classes: int = 10) -> list[Agreement]:
    """The table of the module docstring, one :class:`Agreement` per setting."""
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise ValueError(f"unknown settings {bad}; expected some of {', '.join(SETTINGS)}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=UnitsConfig(kind=units)), dev)
    model.eval()
    model.set_class_prompts([[f"a photo of a class number {i}."] for i in range(classes)])
    with torch.no_grad():
        for unit in model.units.values():
            for p in unit.parameters():
                p.add_(torch.randn_like(p) * unit_scale)  # off the identity init: every parameter matters
    size = image_size(model)
    x = torch.randn(batch_size, 3, size, size, device=dev)
    y = torch.randint(0, classes, (batch_size,), device=dev)
    groups_of: dict[str, list[torch.Tensor]] = {"vision": [], "language": []}
    for (branch, _), unit in sorted(model.units.items()):
        groups_of[branch].extend(unit.parameters())

    def loss() -> torch.Tensor:
        model.invalidate_text_cache()
        return torch.nn.functional.cross_entropy(model(x).float(), y)

    # exact directional derivatives zᵀD∇L (fp32, autograd)
    params = [p for ps in groups_of.values() for p in ps]
    grads = [torch.zeros_like(p) if g is None else g  # e.g. the noise weights of a router in eval mode
             for p, g in zip(params, torch.autograd.grad(loss(), params, allow_unused=True), strict=True)]
    for t in params:
        t.requires_grad_(False)
    grad_of = {id(p): g for p, g in zip(params, grads, strict=True)}
    results = []
    for setting in settings:
        factor = 10.0 if setting == "bf16-eps10" else 1.0
        groups = [ZOGroup(b, ps, (eps_vision if b == "vision" else eps_language) * factor)
                  for b, ps in groups_of.items() if ps]
        dtype = {"fp32": None, "fp16": torch.float16}.get(setting, torch.bfloat16)
        exact, probed = [], []
        start = time.perf_counter()
        for i in range(n_directions):
            zs = directions(groups, 1000 + i)
            flat = [(g, p) for g in groups for p in g.params]
            exact.append(sum(float((grad_of[id(p)] * z).sum()) * g.eps for (g, p), z in zip(flat, zs, strict=True)))
            values = []
            for sign in (1.0, -1.0):
                perturb(groups, 1000 + i, sign)
                try:
                    with torch.no_grad(), contextlib.ExitStack() as stack:
                        if dtype is not None:
                            stack.enter_context(torch.autocast(dev.type, dtype=dtype))
                        if setting == "bf16-units-fp32":
                            stack.enter_context(_units_in_fp32(list(model.units.values())))
                        values.append(float(loss()))
                finally:
                    restore(groups, 1000 + i, sign)
            probed.append((values[0] - values[1]) / 2)
        ms = (time.perf_counter() - start) * 1000 / (2 * n_directions)
        e, q = torch.tensor(exact), torch.tensor(probed)
        results.append(Agreement(setting, _pearson(e, q), float((torch.sign(e) == torch.sign(q)).double().mean()),
                                 n_directions, ms))
    return results


def format_agreement(results: Sequence[Agreement], header: str) -> str:
    lines = [header, "", "| probe setting | correlation with zᵀD∇L | sign agreement | ms per probe forward |",
             "|---|---:|---:|---:|"]
    for r in results:
        corr = "nan" if math.isnan(r.correlation) else f"{r.correlation:.3f}"
        lines.append(f"| {r.setting} | {corr} | {r.sign_agreement:.2f} | {r.ms_per_probe:.0f} |")
    return "\n".join(lines)


def zo_precision_table(*, arch: str = "clip-tiny-12l", units: str = "moe", batch_size: int = 32,
                       n_directions: int = 50, device: str = "cpu", settings: Sequence[str] = SETTINGS,
                       seed: int = 0) -> str:
    """Markdown table of :func:`measure_agreement` with the machine and the command's figures."""
    results = measure_agreement(arch=arch, units=units, batch_size=batch_size, n_directions=n_directions,
                                device=device, settings=settings, seed=seed)
    header = (f"ZO probe precision: arch {arch}, units {units}, batch {batch_size}, {n_directions} directions, "
              f"ε_vision 5e-4, ε_language 1e-3, device {resolve_device(device)}, torch {torch.__version__}.")
    return format_agreement(results, header)
