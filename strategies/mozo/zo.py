"""Zeroth-order (ZO) gradient estimation with per-group perturbation radii (MoZO §3).

Pure tensor maths: imports only torch. The parameters handled here live outside autograd; every
perturbation is an in-place ``add_`` under ``torch.no_grad()`` and the random directions are never
stored: they are regenerated from an integer seed (MeZO's seed replay) with dedicated
``torch.Generator`` objects, one per device, iterating the parameters in a fixed order.

Exact restore. ``restore(groups, seed, scale)`` is ``perturb(groups, seed, -scale)``: it adds the
exact negation of the same displacement. Bit-for-bit restore without keeping a copy of θ is
impossible in general: ``x -> fl(x + δ)`` is many-to-one whenever ``x + δ`` lands in a coarser
binade than ``x`` (e.g. |x| ≪ |δ|: up to 2^23 float32 values of x collapse onto fewer outputs) and
at round-to-even ties, so no function of ``(θ + δ, seed)`` can recover θ there. What we guarantee
instead:

* every perturbation is undone by its own negation *immediately* (``+δ, eval, -δ`` then
  ``-δ, eval, +δ``), never by MeZO's chain ``+δ, -2δ, +δ``. ``fl(fl(x + δ) - δ) == x`` holds
  whenever ``fl(x + δ)`` stays in the binade of x (or a finer one) and is not a tie — in particular
  for x == 0 and, up to rare ties and binade-top crossings, for |x| ≫ |δ|; elsewhere the error is at
  most half an ulp of ``x + δ`` and symmetric in sign. (Measured on float32 with |x| ~ 0.02 and
  |δ| ~ 1e-3: 7 % of elements are off by one ulp after a probe pair, against 46 % for the chain.)
* displacements are materialised per tensor (``d = z * c``; ``p.add_(d)``), never through
  ``add_(z, alpha=c)``, so the forward and backward displacements are exact negations of each other
  regardless of fused multiply-add kernels.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..rng import seeded

logger = logging.getLogger(__name__)

SignMode = Literal["scalar", "elementwise", "none"]
StepMode = Literal["conservative", "aggressive", "probe"]
Candidate = Literal["theta", "minus", "plus", "aggressive", "probe"]
LossFn = Callable[[], float | torch.Tensor]

ProbeMode = Literal["joint", "per_group"]

SIGN_MODES: tuple[str, ...] = ("scalar", "elementwise", "none")
PROBE_MODES: tuple[str, ...] = ("joint", "per_group")
STEP_MODES: tuple[str, ...] = ("conservative", "aggressive", "probe")


@dataclass
class ZOGroup:
    """Parameters sharing one perturbation radius (MoZO: ε_vision < ε_language)."""

    name: str  # label for logs and errors, e.g. "vision"
    params: list[torch.Tensor]  # leaf tensors outside autograd, perturbed in place
    eps: float  # perturbation radius ε_g of this group
    weight_decay: float = 0.0  # decoupled decay on accepted updates, only for params with ndim >= 2
    step_scale: float = 1.0  # multiplier of this group's update direction (MoZO "scaled": ε_v/ε_l)

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"ZOGroup {self.name!r}: eps={self.eps!r}: expected a finite float > 0")
        if not (isinstance(self.step_scale, (int, float)) and math.isfinite(self.step_scale)
                and self.step_scale > 0):
            raise ValueError(f"ZOGroup {self.name!r}: step_scale={self.step_scale!r}: expected a finite float > 0")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(
                f"ZOGroup {self.name!r}: weight_decay={self.weight_decay!r}: expected a float >= 0"
            )
        for i, p in enumerate(self.params):
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise TypeError(f"ZOGroup {self.name!r}: params[{i}]: expected a floating-point tensor")


@dataclass
class ZOEstimate:
    """Result of :func:`zo_estimate`; the gradient itself is never stored (replay from ``seeds``)."""

    seeds: list[int]  # direction seed of each query
    projected: list[float]  # raw projected gradient p_raw of each query (per-group probes: Σ_g p_g)
    loss: float  # L(θ); mean of the ± probes when two-sided with center_loss=False
    per_group: list[list[float]] | None = None  # [group][query] p_g of per-group probes; None = joint
    probes: list[list[tuple[float, float]]] | None = None  # [target][query] (L(θ+), L(θ−)) of two-sided probes

    def projected_of(self, index: int) -> list[float]:
        """The projected gradients (one per query) that drive group ``index``'s update."""
        return self.projected if self.per_group is None else self.per_group[index]


@dataclass
class ZOStepResult:
    """Result of :func:`zo_step`."""

    loss: float  # minibatch loss at θ before the step (see ZOEstimate.loss)
    projected: list[float]  # raw projected gradient per query
    seeds: list[int]  # direction seed per query
    candidate: Candidate  # accepted candidate: "theta", "minus", "plus" (conservative) or "aggressive"
    loss_after: float | None  # loss of the accepted candidate (None for aggressive: not evaluated)
    per_group: list[list[float]] | None = None  # [group][query] p_g of per-group probes (ZOEstimate)


# --------------------------------------------------------------------------- directions


def query_seeds(seed: int, q: int) -> list[int]:
    """Direction seeds of the q queries of one estimate: ``seed + i`` for i in 0..q-1."""
    if not isinstance(q, int) or isinstance(q, bool) or q < 1:
        raise ValueError(f"q={q!r}: expected an int >= 1")
    return [int(seed) + i for i in range(q)]


def _generator(
    cache: dict[torch.device, torch.Generator], seed: int, device: torch.device
) -> torch.Generator:
    if device not in cache:
        cache[device] = torch.Generator(device=device).manual_seed(seed)
    return cache[device]


def iter_directions(
    groups: Sequence[ZOGroup], seeds: Sequence[int]
) -> Iterator[tuple[ZOGroup, torch.Tensor, list[torch.Tensor]]]:
    """Yield ``(group, param, [z_i for each seed])`` in a fixed order, z_i ~ N(0, I) jointly over all
    parameters of all groups. Query i uses one generator per device seeded with ``seeds[i]``; each
    generator advances independently, so z_i is the same whatever the other seeds are."""
    caches: list[dict[torch.device, torch.Generator]] = [{} for _ in seeds]
    for group in groups:
        for p in group.params:
            zs = [
                torch.randn(p.shape, generator=_generator(c, s, p.device), device=p.device, dtype=p.dtype)
                for c, s in zip(caches, seeds, strict=True)
            ]
            yield group, p, zs


def directions(groups: Sequence[ZOGroup], seed: int) -> list[torch.Tensor]:
    """Materialise z for one seed, one tensor per parameter (tests and diagnostics only)."""
    return [zs[0] for _, _, zs in iter_directions(groups, [seed])]


class Directions:
    """z_i of each query seed (the values :func:`iter_directions` draws), drawn once and kept for a
    step: ``q × |θ_ZO|`` floats of memory instead of redrawing z for every probe, restore, candidate
    and update (9 draws per conservative step). MoZO's units are small (a few million parameters for
    ViT-B/16), so this is cheap; :func:`zo_step` takes ``cache_directions=False`` for MeZO-sized ZO
    parameters, where seed replay's zero memory matters more."""

    def __init__(self, groups: Sequence[ZOGroup], seeds: Sequence[int]) -> None:
        self.seeds = list(seeds)
        index = {id(g): k for k, g in enumerate(groups)}
        self.z: list[list[list[torch.Tensor]]] = [[[] for _ in self.seeds] for _ in groups]  # [group][query]
        for group, _, zs in iter_directions(groups, self.seeds):
            for i, z in enumerate(zs):
                self.z[index[id(group)]][i].append(z)

    def of(self, group: int, seed: int) -> list[torch.Tensor]:
        """z of group ``group`` for query seed ``seed`` (never modified by its users)."""
        return self.z[group][self.seeds.index(seed)]


def _as_scalar(value: Scalar, like: torch.Tensor) -> Scalar:
    """A float, or a 0-d tensor on ``like``'s device and dtype (a foreach multiplier; no host read)."""
    return value.to(device=like.device, dtype=like.dtype) if isinstance(value, torch.Tensor) else value


def perturb(groups: Sequence[ZOGroup], seed: int, scale: float, only: int | None = None,
            dirs: Directions | None = None) -> None:
    """θ_g ← θ_g + scale·ε_g·z_g for every group g, in place (MoZO §3, probe θ ± Dz, D = diag(ε_g)).

    ``only``: move group ``groups[only]`` alone (per-group probes); z is still drawn over all groups
    so that z_g is the same block of the joint stream that the update replays. ``dirs``: z drawn once
    for the step (:class:`Directions`), else drawn here. The displacement d = z·(scale·ε_g) is
    materialised and added, the exact negation of the ``-scale`` call (module doc)."""
    dirs = dirs if dirs is not None else Directions(groups, [seed])
    with torch.no_grad():
        for k, group in enumerate(groups):
            if (only is None or k == only) and group.params:
                torch._foreach_add_(group.params, torch._foreach_mul(dirs.of(k, seed), scale * group.eps))


def restore(groups: Sequence[ZOGroup], seed: int, scale: float, only: int | None = None,
            dirs: Directions | None = None) -> None:
    """Undo ``perturb(groups, seed, scale, only)``: ``perturb(groups, seed, -scale, only)`` (module doc)."""
    perturb(groups, seed, -scale, only, dirs)


def model_seed_for(seed: int) -> int:
    """Default seed of the model's randomness (dropout, router noise) for direction seed ``seed``.

    Seeding the model's RNG with the direction seed itself makes the first noise values equal the
    first entries of z (one Mersenne-Twister stream), which biases the estimate whenever the loss
    depends on the noise. A 64-bit mix (splitmix64 finaliser) gives a different, unrelated stream."""
    x = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) >> 1  # 63 bits: a valid torch seed


# --------------------------------------------------------------------------- loss closures


Scalar = float | torch.Tensor  # a loss value: a float, or a 0-d float64 tensor left on its device


def _evaluate(loss_fn: LossFn) -> torch.Tensor:
    """The loss as a 0-d float64 tensor on the loss's device: no host synchronisation (see zo_step)."""
    with torch.no_grad():
        value = loss_fn()
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).double()
    return torch.tensor(float(value), dtype=torch.float64)


def _host(value: Scalar) -> float:
    return float(value)


# --------------------------------------------------------------------------- estimator


def _probe(groups: Sequence[ZOGroup], loss_fn: LossFn, seed: int, scale: float,
           only: int | None = None, dirs: Directions | None = None) -> torch.Tensor:
    """L(θ + scale·Dz) (only group ``only`` moved if given); θ restored in ``finally`` even on error."""
    perturb(groups, seed, scale, only, dirs)
    try:
        return _evaluate(loss_fn)
    finally:
        restore(groups, seed, scale, only, dirs)


def zo_estimate(
    groups: Sequence[ZOGroup],
    loss_fn: LossFn,
    seed: int,
    *,
    q: int = 1,
    two_sided: bool = True,
    center_loss: bool = True,
    rng_seed_for_model: int | None = None,
    probe: ProbeMode = "joint",
    group_loss_fns: Sequence[LossFn] | None = None,
    loss_at_theta: Scalar | None = None,
    on_device: bool = False,
    dirs: Directions | None = None,
    cache_directions: bool = True,
) -> ZOEstimate:
    """ZO estimate with per-group radii (MoZO §3, ZO estimator); one joint probe per query or one
    probe per group.

    joint: with D = diag(ε_g) and z ~ N(0, I) over all groups jointly,
        two-sided  p_raw = (L(θ + Dz) − L(θ − Dz)) / 2,   one-sided  p_raw = L(θ + Dz) − L(θ),
        ĝ_g = (p_raw / ε_g) · z_g,   ĝ = (1/q) Σ_i ĝ_i  (query i uses seed + i).
    Unbiased per group: p_raw = zᵀD∇L + O(ε²) and E[(zᵀD∇L) z_g] = D_gg ∇_g L = ε_g ∇_g L, so
    E[ĝ_g] = ∇_g L + O(ε²). With one group this is the textbook (L(θ+εz) − L(θ−εz))/(2ε) · z.
    per_group: group g is probed alone, p_g = (L(θ + ε_g z_g) − L(θ − ε_g z_g)) / 2 (or
    L(θ + ε_g z_g) − L(θ)), ĝ_g = (p_g / ε_g) · z_g: each group's estimate is free of the other
    groups' terms, at twice the probes (``projected`` then holds Σ_g p_g ≈ zᵀD∇L per query).
    ``group_loss_fns[g]`` (default ``loss_fn``) is evaluated while only group g moves; it may reuse
    what the other groups compute, but must equal ``loss_fn`` at θ.

    Every loss is called under ``no_grad`` through :func:`seeded` with ``rng_seed_for_model``
    (default :func:`model_seed_for` ``(seed)``, a stream unrelated to z). ``center_loss`` spends one
    extra forward (two-sided only) to report L(θ); otherwise ``loss`` is the mean of the ± probes,
    L(θ) + O(ε²). ``loss_at_theta``: L(θ) computed by the caller under the same model seed (MoZO takes
    it from the first-order forward); it is then used instead of evaluating it (one forward fewer).
    ``on_device``: the numbers of the result stay 0-d float64 tensors on the loss's device (no host
    synchronisation; :func:`zo_step` uses this), else they are floats. ``dirs`` / ``cache_directions``:
    z drawn once for all probes (:class:`Directions`; given, or drawn here unless ``cache_directions``
    is False, then redrawn per perturbation). Parameters are restored after every probe, also when a
    loss raises.
    """
    if probe not in PROBE_MODES:
        raise ValueError(f"probe={probe!r}: expected one of {', '.join(PROBE_MODES)}")
    seeds = query_seeds(seed, q)
    if dirs is None and cache_directions:
        dirs = Directions(groups, seeds)
    fn = seeded(loss_fn, model_seed_for(seed) if rng_seed_for_model is None else rng_seed_for_model)
    if loss_at_theta is not None:
        loss0: Scalar | None = (loss_at_theta.detach().reshape(()).double()
                                if isinstance(loss_at_theta, torch.Tensor) else float(loss_at_theta))
    else:
        loss0 = _evaluate(fn) if (center_loss or not two_sided) else None
    if probe == "joint":
        fns: list[LossFn] = [fn]
        targets: list[int | None] = [None]
    else:
        raw = list(group_loss_fns) if group_loss_fns is not None else [loss_fn] * len(groups)
        if len(raw) != len(groups):
            raise ValueError(f"group_loss_fns: {len(raw)} closures for {len(groups)} groups")
        model_seed = model_seed_for(seed) if rng_seed_for_model is None else rng_seed_for_model
        fns, targets = [seeded(f, model_seed) for f in raw], list(range(len(groups)))
    table: list[list[Scalar]] = [[] for _ in targets]  # [target][query]
    points: list[list[tuple[Scalar, Scalar]]] = [[] for _ in targets]
    probe_means: list[Scalar] = []
    for s in seeds:
        for row, pts, f, only in zip(table, points, fns, targets, strict=True):
            plus = _probe(groups, f, s, 1.0, only, dirs)
            if two_sided:
                minus = _probe(groups, f, s, -1.0, only, dirs)
                row.append((plus - minus) / 2.0)
                pts.append((plus, minus))
                probe_means.append((plus + minus) / 2.0)
            else:
                if loss0 is None:  # one-sided estimates always evaluate L(θ) first
                    raise RuntimeError("one-sided ZO estimate without the loss at θ")
                row.append(plus - loss0)
    projected = [_sum(col) for col in zip(*table, strict=True)]
    loss = loss0 if loss0 is not None else _sum(probe_means) / len(probe_means)
    est = ZOEstimate(seeds=seeds, projected=projected, loss=loss,  # type: ignore[arg-type]
                     per_group=None if probe == "joint" else table,  # type: ignore[arg-type]
                     probes=points if two_sided else None)  # type: ignore[arg-type]
    return est if on_device else _on_host(est)


def _sum(values: Sequence[Scalar]) -> Scalar:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _on_host(est: ZOEstimate) -> ZOEstimate:
    """``est`` with every number a float (the first conversion waits for the device, the rest are copies)."""
    return ZOEstimate(
        seeds=est.seeds, projected=[_host(v) for v in est.projected], loss=_host(est.loss),
        per_group=None if est.per_group is None else [[_host(v) for v in row] for row in est.per_group],
        probes=None if est.probes is None else [[(_host(a), _host(b)) for a, b in row] for row in est.probes],
    )


# --------------------------------------------------------------------------- updates


def _sign(x: Scalar) -> Scalar:
    if isinstance(x, torch.Tensor):
        return torch.sign(x)
    return float((x > 0) - (x < 0))


def _check_sign_mode(sign_mode: str) -> None:
    if sign_mode not in SIGN_MODES:
        raise ValueError(f"sign_mode={sign_mode!r}: expected one of {', '.join(SIGN_MODES)}")


def gradient_estimate(
    groups: Sequence[ZOGroup], estimate: ZOEstimate, sign_mode: SignMode = "none"
) -> list[torch.Tensor]:
    """Materialise the (sign-normalized) estimate, one tensor per parameter (tests, diagnostics)."""
    _check_sign_mode(sign_mode)
    dirs = Directions(groups, estimate.seeds)
    return [d for k, g in enumerate(groups) if g.params
            for d in _group_direction(g, [dirs.of(k, s) for s in estimate.seeds], estimate.projected_of(k), sign_mode)]


def _group_direction(
    group: ZOGroup, zs: list[list[torch.Tensor]], projected: Sequence[Scalar], sign_mode: str
) -> list[torch.Tensor]:
    """Update direction of a group's parameters, averaged over queries (MoZO §3, sign normalization).

    scalar: sign(p_raw)·z_g (scale-free, not divided by ε); elementwise: sign(p_raw·z_g);
    none: (p_raw/ε_g)·z_g, the raw estimate ĝ_g; each times ``group.step_scale``. Foreach ops over the
    group's tensors; ``zs[i]`` (z of query i) is left unmodified."""
    acc: list[torch.Tensor] | None = None
    for z, p_raw in zip(zs, projected, strict=True):
        if sign_mode == "scalar":
            term = torch._foreach_mul(z, _as_scalar(_sign(p_raw), z[0]))
        elif sign_mode == "elementwise":
            term = torch._foreach_mul(torch._foreach_sign(z), _as_scalar(_sign(p_raw), z[0]))
        else:
            term = torch._foreach_mul(z, _as_scalar(p_raw / group.eps, z[0]))
        if acc is None:
            acc = list(term)
        else:
            torch._foreach_add_(acc, term)
    assert acc is not None
    if len(zs) > 1:
        torch._foreach_div_(acc, len(zs))
    if group.step_scale != 1.0:
        torch._foreach_mul_(acc, group.step_scale)
    return acc


def apply_update(
    groups: Sequence[ZOGroup],
    estimate: ZOEstimate,
    lr: float,
    sign_mode: SignMode = "scalar",
    scale: Scalar = -1.0,
    dirs: Directions | None = None,
) -> None:
    """θ ← θ + scale·lr·direction, z from ``dirs`` or by seed replay (scale = −1: descent; +1 undoes it,
    see module doc). ``scale`` may be a 0-d tensor (:func:`zo_step`'s device-side choice)."""
    _check_sign_mode(sign_mode)
    dirs = dirs if dirs is not None else Directions(groups, estimate.seeds)
    with torch.no_grad():
        for k, group in enumerate(groups):
            if not group.params:
                continue
            d = _group_direction(group, [dirs.of(k, s) for s in estimate.seeds], estimate.projected_of(k), sign_mode)
            torch._foreach_mul_(d, _as_scalar(scale * lr, d[0]))
            torch._foreach_add_(group.params, d)


def apply_weight_decay(groups: Sequence[ZOGroup], lr: Scalar) -> None:
    """Decoupled decay θ ← θ − lr·wd_g·θ on params with ndim ≥ 2 (biases and norms are left alone).
    ``lr`` may be a 0-d tensor (0 where no move was accepted: :func:`zo_step` decides on the device)."""
    with torch.no_grad():
        for group in groups:
            matrices = [p for p in group.params if p.ndim >= 2]
            if group.weight_decay > 0 and matrices:
                torch._foreach_mul_(matrices, _as_scalar(1.0 - lr * group.weight_decay, matrices[0]))


def _candidate_loss(
    groups: Sequence[ZOGroup],
    estimate: ZOEstimate,
    loss_fn: LossFn,
    lr: float,
    sign_mode: SignMode,
    scale: float,
    dirs: Directions | None = None,
) -> torch.Tensor:
    """L(θ + scale·lr·direction); θ is restored in ``finally`` even if ``loss_fn`` raises."""
    apply_update(groups, estimate, lr, sign_mode, scale, dirs)
    try:
        return _evaluate(loss_fn)
    finally:
        apply_update(groups, estimate, lr, sign_mode, -scale, dirs)


@dataclass(frozen=True)
class ZOStepInputs:
    """What a ZO step reads, whatever its candidate mode (:func:`zo_step`'s keywords, resolved)."""

    groups: Sequence[ZOGroup]
    loss_fn: LossFn  # L at the current θ (called under ``model_seed``)
    seed: int  # direction seed of query 0 (:func:`query_seeds`)
    lr: float
    model_seed: int  # the step's model randomness, shared by every evaluation
    q: int = 1
    two_sided: bool = True
    sign_mode: SignMode = "scalar"
    probe: ProbeMode = "joint"
    group_loss_fns: Sequence[LossFn] | None = None
    loss_at_theta: Scalar | None = None
    cache_directions: bool = True
    dirs: Directions | None = None  # z of the step's queries, drawn once (None: replayed from the seeds)

    def seeded_loss(self) -> LossFn:
        """``loss_fn`` under the step's model seed (the closure :func:`zo_estimate` builds for its probes)."""
        return seeded(self.loss_fn, self.model_seed)

    def estimate(self, *, center_loss: bool) -> ZOEstimate:
        """The step's ZO estimate, its numbers left on the device (:func:`zo_estimate`)."""
        return zo_estimate(
            self.groups, self.loss_fn, self.seed, q=self.q, two_sided=self.two_sided, center_loss=center_loss,
            rng_seed_for_model=self.model_seed, probe=self.probe, group_loss_fns=self.group_loss_fns,
            loss_at_theta=self.loss_at_theta, on_device=True, dirs=self.dirs,
            cache_directions=self.cache_directions,
        )


def conservative_step(step: ZOStepInputs) -> ZOStepResult:
    """The paper's rule (MoZO §3): keep the best of {θ, θ − lr·d, θ + lr·d} by minibatch loss (d the
    sign-normalised estimate), ties preferring θ then minus; the choice is a device-side coefficient
    c ∈ {−1, 0, +1} (θ ← θ + c·lr·d, weight decay scaled by |c|), the figures read back once."""
    groups, lr, sign_mode, dirs = step.groups, step.lr, step.sign_mode, step.dirs
    est = step.estimate(center_loss=True)
    fn = step.seeded_loss()
    theta = torch.as_tensor(est.loss, dtype=torch.float64)
    minus = _candidate_loss(groups, est, fn, lr, sign_mode, -1.0, dirs)
    plus = _candidate_loss(groups, est, fn, lr, sign_mode, 1.0, dirs)
    theta, minus, plus = (v.to(minus.device) for v in (theta, minus, plus))
    take_minus = (minus < theta) & (minus <= plus)  # ties prefer θ, then minus
    take_plus = (plus < theta) & ~take_minus
    coef = take_plus.double() - take_minus.double()  # +1 plus, −1 minus, 0 θ
    apply_update(groups, est, lr, sign_mode, coef, dirs)
    apply_weight_decay(groups, lr * coef.abs())
    loss_after = torch.where(take_minus, minus, torch.where(take_plus, plus, theta))
    host = _on_host(est)  # the one read-back of the step
    code = int(coef)
    best: Candidate = "minus" if code < 0 else "plus" if code > 0 else "theta"
    logger.debug("zo_step losses theta %s minus %s plus %s -> %s", host.loss, minus, plus, best)
    return ZOStepResult(host.loss, host.projected, est.seeds, best, float(loss_after), host.per_group)


def aggressive_step(step: ZOStepInputs) -> ZOStepResult:
    """θ ← θ − lr·d with no candidate evaluated (L(θ) is the mean of the ± probes when two-sided)."""
    est = step.estimate(center_loss=False)
    apply_update(step.groups, est, step.lr, step.sign_mode, -1.0, step.dirs)
    apply_weight_decay(step.groups, step.lr)
    host = _on_host(est)
    return ZOStepResult(host.loss, host.projected, est.seeds, "aggressive", None, host.per_group)


def probe_point_step(step: ZOStepInputs) -> ZOStepResult:
    """Move each target (all groups, or one group per row of per-group probes) to its best probe point
    θ ± Dz_i by its probe loss, θ kept on ties (an option, not the paper's rule: no candidate forward).
    The figures are read before moving (the chosen seed picks the point)."""
    est = _on_host(step.estimate(center_loss=True))
    assert est.probes is not None
    rows = est.probes
    moved: list[ZOGroup] = []
    best_loss = est.loss
    for target, row in enumerate(rows):
        options = [(est.loss, 0, 0.0)] + [(v, i, sign) for i, (plus, minus) in enumerate(row)
                                           for v, sign in ((plus, 1.0), (minus, -1.0))]
        value, index, sign = min(options, key=lambda o: o[0])  # ties keep θ (first), then the earlier point
        if sign == 0.0:
            continue
        only = None if len(rows) == 1 else target
        perturb(step.groups, est.seeds[index], sign, only, step.dirs)
        moved.extend(step.groups if only is None else [step.groups[only]])
        best_loss = min(best_loss, value)
    apply_weight_decay(moved, step.lr)
    candidate: Candidate = "probe" if moved else "theta"
    loss_after = best_loss if len(rows) == 1 or not moved else None
    return ZOStepResult(est.loss, est.projected, est.seeds, candidate, loss_after, est.per_group)


STEPS: dict[str, Callable[[ZOStepInputs], ZOStepResult]] = {
    "conservative": conservative_step, "aggressive": aggressive_step, "probe": probe_point_step,
}


def zo_step(
    groups: Sequence[ZOGroup],
    loss_fn: LossFn,
    seed: int,
    *,
    lr: float,
    q: int = 1,
    two_sided: bool = True,
    sign_mode: SignMode = "scalar",
    mode: StepMode = "conservative",
    rng_seed_for_model: int | None = None,
    probe: ProbeMode = "joint",
    group_loss_fns: Sequence[LossFn] | None = None,
    loss_at_theta: Scalar | None = None,
    cache_directions: bool = True,
) -> ZOStepResult:
    """One ZO update (MoZO §3): checks the options, resolves them into :class:`ZOStepInputs` and runs
    the step of candidate ``mode`` (:data:`STEPS`). All evaluations share one model seed
    (``rng_seed_for_model``, default :func:`model_seed_for` ``(seed)``), so model randomness is
    identical across probes and candidates and unrelated to the directions. ``probe`` /
    ``group_loss_fns`` / ``loss_at_theta``: see :func:`zo_estimate`.

    - conservative (:func:`conservative_step`, the paper's rule): the best of {θ, θ − lr·d, θ + lr·d}
      (d = sign-normalised ĝ); never increases the minibatch loss (bit-for-bit when restores are
      exact, see module doc);
    - aggressive (:func:`aggressive_step`): θ ← θ − lr·d;
    - probe (:func:`probe_point_step`, an option, not the paper's rule): the best of {θ, every probe
      point θ ± D z_i} by its probe loss, no candidate forward (two-sided only; ``lr`` and
      ``sign_mode`` play no part). With per-group probes each group picks its own point from its own
      probes, and the combined point is not evaluated (``loss_after`` is None).

    Decoupled weight decay is applied only when a move is accepted (in probe mode, to the groups that
    moved). No host synchronisation until the step is enqueued: the losses stay on the device, the
    sign of each projected gradient multiplies z as a 0-d tensor, and the figures of the result are
    read once at the end. ``cache_directions``: z is drawn once for the step (:class:`Directions`),
    else replayed from the seed at every use (same values, no memory).
    """
    _check_sign_mode(sign_mode)
    if mode not in STEP_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(STEP_MODES)}")
    if mode == "probe" and not two_sided:
        raise ValueError("mode='probe' needs two-sided probes (its candidates are θ ± Dz)")
    step = ZOStepInputs(
        groups, loss_fn, seed, lr, model_seed_for(seed) if rng_seed_for_model is None else rng_seed_for_model,
        q=q, two_sided=two_sided, sign_mode=sign_mode, probe=probe, group_loss_fns=group_loss_fns,
        loss_at_theta=loss_at_theta, cache_directions=cache_directions,
        dirs=Directions(groups, query_seeds(seed, q)) if cache_directions else None,
    )
    return STEPS[mode](step)


@contextlib.contextmanager
def params_outside_autograd(params: Iterable[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Set ``requires_grad=False`` on ``params`` for the block, restoring the previous flags after."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield params
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
