"""Invariants of the MoZO zeroth-order estimator (strategies/mozo/zo.py) on toy problems."""

from __future__ import annotations

import math

import pytest
import torch

from strategies.mozo.zo import (
    ZOEstimate,
    ZOGroup,
    apply_update,
    apply_weight_decay,
    directions,
    gradient_estimate,
    model_seed_for,
    params_outside_autograd,
    perturb,
    restore,
    seeded,
    zo_estimate,
    zo_step,
)

F64 = torch.float64


# --------------------------------------------------------------------------- toy problems


def quadratic(dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SPD A (eigenvalues in [0.5, 2]) and b for L(θ) = ½θᵀAθ + bᵀθ."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    a = q @ torch.diag(torch.linspace(0.5, 2.0, dim, dtype=F64)) @ q.T  # (dim, dim)
    b = torch.randn(dim, generator=g, dtype=F64)
    return a, b


def quad_loss(parts: list[torch.Tensor], a: torch.Tensor, b: torch.Tensor):
    def loss() -> torch.Tensor:
        theta = torch.cat([p.reshape(-1) for p in parts])  # (dim,)
        return 0.5 * theta @ a @ theta + b @ theta

    return loss


def mean_estimate(groups, loss_fn, n: int, **kw) -> list[torch.Tensor]:
    """Average of ĝ over seeds 0..n-1."""
    total = [torch.zeros_like(p) for g in groups for p in g.params]
    for s in range(n):
        est = zo_estimate(groups, loss_fn, s, center_loss=False, **kw)
        for t, gi in zip(total, gradient_estimate(groups, est, "none"), strict=True):
            t.add_(gi)
    return [t / n for t in total]


def rel_err(est: torch.Tensor, true: torch.Tensor) -> float:
    return float((est - true).norm() / true.norm())


def linear_mse():
    """Linear model y = xWᵀ + c with MSE on a fixed batch; returns params, loss, true grads."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g, dtype=F64), torch.randn(16, 3, generator=g, dtype=F64)
    w, c = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)

    def loss() -> torch.Tensor:
        return ((x @ w.T + c - y) ** 2).mean()  # (16, 3) -> scalar

    wg, cg = w.clone().requires_grad_(), c.clone().requires_grad_()
    true = torch.autograd.grad(((x @ wg.T + cg - y) ** 2).mean(), [wg, cg])
    return w, c, loss, true


# --------------------------------------------------------------------------- unbiasedness


def test_two_sided_matches_gradient_on_quadratic():
    a, b = quadratic()
    theta = torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=F64)
    groups = [ZOGroup("all", [theta], eps=1e-3)]
    (avg,) = mean_estimate(groups, quad_loss([theta], a, b), 3000)
    assert rel_err(avg, a @ theta + b) < 0.1


def test_per_group_eps_is_unbiased_per_group():
    a, b = quadratic()
    theta = torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=F64)
    pa, pb = theta[:3].clone(), theta[3:].clone()
    groups = [ZOGroup("vision", [pa], eps=1e-3), ZOGroup("language", [pb], eps=2e-3)]
    avg_a, avg_b = mean_estimate(groups, quad_loss([pa, pb], a, b), 3000)
    true = a @ theta + b
    assert rel_err(avg_a, true[:3]) < 0.1
    assert rel_err(avg_b, true[3:]) < 0.1
    # a shared ε (e.g. dividing by ε_language for both groups) would halve the vision estimate
    assert rel_err(avg_a * 1e-3 / 2e-3, true[:3]) > 0.3


def test_two_sided_matches_gradient_on_linear_mse():
    w, c, loss, (gw, gc) = linear_mse()
    groups = [ZOGroup("w", [w], eps=1e-3), ZOGroup("c", [c], eps=1.5e-3)]
    avg_w, avg_c = mean_estimate(groups, loss, 4000)
    assert rel_err(torch.cat([avg_w.reshape(-1), avg_c]), torch.cat([gw.reshape(-1), gc])) < 0.1
    assert rel_err(avg_w, gw) < 0.15 and rel_err(avg_c, gc) < 0.15


def test_one_sided_matches_gradient_on_quadratic():
    a, b = quadratic()
    theta = torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=F64)
    groups = [ZOGroup("all", [theta], eps=1e-5)]
    (avg,) = mean_estimate(groups, quad_loss([theta], a, b), 3000, two_sided=False)
    assert rel_err(avg, a @ theta + b) < 0.15


# --------------------------------------------------------------------------- hand-computed cases


def test_hand_computed_single_parameter():
    theta = torch.ones(1, dtype=F64)
    groups = [ZOGroup("p", [theta], eps=0.1)]
    loss = lambda: theta[0] ** 2  # noqa: E731
    z = directions(groups, 7)[0].item()
    two = zo_estimate(groups, loss, 7)
    assert two.seeds == [7] and two.loss == 1.0
    assert two.projected[0] == pytest.approx(0.2 * z, rel=1e-12)  # ((1+.1z)² − (1−.1z)²)/2
    assert gradient_estimate(groups, two)[0].item() == pytest.approx(2 * z * z, rel=1e-12)
    one = zo_estimate(groups, loss, 7, two_sided=False)
    assert one.projected[0] == pytest.approx(0.2 * z + 0.01 * z * z, rel=1e-12)
    apply_update(groups, two, lr=0.5, sign_mode="scalar")  # θ ← 1 − 0.5·sign(0.2z)·z
    assert theta.item() == pytest.approx(1 - 0.5 * abs(z), rel=1e-15)


def test_q_queries_average_single_query_estimates():
    a, b = quadratic()
    theta = torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=F64)
    groups = [ZOGroup("all", [theta], eps=1e-3)]
    loss = quad_loss([theta], a, b)
    e2 = zo_estimate(groups, loss, 10, q=2)
    e_a, e_b = zo_estimate(groups, loss, 10), zo_estimate(groups, loss, 11)
    assert e2.seeds == [10, 11] and e2.projected == e_a.projected + e_b.projected
    (g2,) = gradient_estimate(groups, e2)
    (ga,), (gb,) = gradient_estimate(groups, e_a), gradient_estimate(groups, e_b)
    assert torch.equal(g2, (ga + gb) / 2)
    assert not torch.equal(ga, gb)


def test_directions_are_joint_and_replayable():
    p1, p2 = torch.zeros(3, 2), torch.zeros(4)
    groups = [ZOGroup("a", [p1], eps=0.1), ZOGroup("b", [p2], eps=0.2)]
    z = directions(groups, 5)
    assert all(torch.equal(x, y) for x, y in zip(z, directions(groups, 5), strict=True))
    assert not torch.equal(z[0], directions(groups, 6)[0])
    joint = torch.randn(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.cat([z[0].reshape(-1), z[1]]), joint)  # one stream over all groups
    perturb(groups, 5, 2.0)
    assert torch.equal(p1, z[0] * (2.0 * 0.1)) and torch.equal(p2, z[1] * (2.0 * 0.2))


# --------------------------------------------------------------------------- sign normalization


def test_scalar_sign_update_is_exactly_lr_z():
    a, b = quadratic()
    theta = torch.randn(5, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    theta0 = theta.clone()
    groups = [ZOGroup("all", [theta], eps=1e-2)]
    est = zo_estimate(groups, quad_loss([theta], a.float(), b.float()), 3)
    (z,) = directions(groups, 3)
    s = math.copysign(1.0, est.projected[0])
    apply_update(groups, est, lr=0.01, sign_mode="scalar")
    assert torch.equal(theta, theta0 + (z * s) * -0.01)
    zero = torch.zeros(5)
    apply_update([ZOGroup("all", [zero], eps=1e-2)], est, lr=0.01, sign_mode="scalar")
    assert torch.equal(zero, z * (-0.01 * s))  # ±lr·z, independent of ε and |p_raw|


def test_elementwise_sign_update_is_exactly_lr():
    theta = torch.zeros(50)
    groups = [ZOGroup("all", [theta], eps=1e-2)]
    est = ZOEstimate(seeds=[3], projected=[-0.37], loss=0.0)
    apply_update(groups, est, lr=0.01, sign_mode="elementwise")
    (z,) = directions(groups, 3)
    assert torch.equal(theta.abs(), torch.full((50,), 0.01))
    assert torch.equal(torch.sign(theta), torch.sign(z))  # −lr·sign(p·z) with p < 0


def test_none_mode_uses_raw_estimate():
    theta = torch.zeros(4, dtype=F64)
    groups = [ZOGroup("all", [theta], eps=0.5)]
    est = ZOEstimate(seeds=[1], projected=[0.3], loss=0.0)
    apply_update(groups, est, lr=0.1, sign_mode="none", scale=1.0)
    (z,) = directions(groups, 1)
    assert torch.allclose(theta, 0.1 * (0.3 / 0.5) * z, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- exact restore


def exact_regime_params() -> list[torch.Tensor]:
    """Zeros and mid-binade values with |θ| ≫ ε|z|: restore is exact there (module docstring)."""
    w = torch.tensor([[0.0, 1.5, -0.75], [3.0, 0.0, -1.25]])
    return [w, torch.tensor([0.0, 0.375, -6.0])]


@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("q", [1, 3])
def test_estimate_restores_parameters_exactly(two_sided, q):
    params = exact_regime_params()
    before = [p.clone() for p in params]
    groups = [ZOGroup("w", params[:1], eps=1e-3), ZOGroup("b", params[1:], eps=3e-4)]
    loss = lambda: sum((p**2).sum() for p in params)  # noqa: E731
    for seed in range(20):
        zo_estimate(groups, loss, seed, q=q, two_sided=two_sided)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_mezo_chain_is_not_exact_but_probe_pairs_are():
    """Shows the restore test can fail: MeZO's +δ, −2δ, +δ chain drifts on the same values."""
    params = exact_regime_params()
    before = [p.clone() for p in params]
    groups = [ZOGroup("all", params, eps=1e-3)]
    drifted = False
    for seed in range(20):
        perturb(groups, seed, 1.0)
        perturb(groups, seed, -2.0)
        perturb(groups, seed, 1.0)
        drifted |= not all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        for p, b in zip(params, before, strict=True):
            p.copy_(b)
        perturb(groups, seed, 1.0)
        restore(groups, seed, 1.0)
        perturb(groups, seed, -1.0)
        restore(groups, seed, -1.0)
        assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert drifted


def test_restore_error_is_bounded_by_an_ulp_elsewhere():
    theta = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 0.02
    before = theta.clone()
    groups = [ZOGroup("all", [theta], eps=1e-3)]
    zo_estimate(groups, lambda: theta.sum(), 0)
    (z,) = directions(groups, 0)
    bound = 2 * torch.finfo(theta.dtype).eps * (before.abs() + 1e-3 * z.abs())
    assert bool(((theta - before).abs() <= bound).all())


@pytest.mark.parametrize(
    ("call", "fail_at"),
    [
        # zo_estimate evaluates 1: θ, 2: θ + Dz, 3: θ − Dz
        ("estimate", 1), ("estimate", 2), ("estimate", 3),
        # a conservative zo_step then evaluates 4: θ − lr·d, 5: θ + lr·d
        ("step", 4), ("step", 5),
    ],
)
def test_parameters_restored_when_the_loss_raises(call, fail_at):
    params = exact_regime_params()
    before = [p.clone() for p in params]
    groups = [ZOGroup("all", params, eps=1e-3)]
    calls = []

    def loss() -> float:
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("boom")
        return float(sum((p**2).sum() for p in params))

    with pytest.raises(RuntimeError, match="boom"):
        if call == "estimate":
            zo_estimate(groups, loss, 4)
        else:
            zo_step(groups, loss, 4, lr=1e-3)
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


# --------------------------------------------------------------------------- conservative / aggressive


@pytest.mark.parametrize("sign_mode", ["scalar", "elementwise", "none"])
def test_conservative_never_increases_loss_and_aggressive_can(sign_mode):
    """Random θ, lr up to 3: restores are exact only up to rounding here (module docstring)."""
    a, b = quadratic()
    increase_cons, increase_aggr = [], []
    chosen = set()
    for seed in range(60):
        lr = [1e-3, 0.05, 0.3, 3.0][seed % 4]
        theta0 = torch.randn(5, generator=torch.Generator().manual_seed(100 + seed), dtype=F64)
        theta = theta0.clone()
        groups = [ZOGroup("all", [theta], eps=1e-3)]
        loss = quad_loss([theta], a, b)
        before = float(loss())
        res = zo_step(groups, loss, seed, lr=lr, sign_mode=sign_mode)
        after = float(loss())
        assert res.loss == before and res.loss_after <= res.loss
        assert after == pytest.approx(res.loss_after, rel=1e-13)
        assert (res.candidate == "theta") == torch.allclose(theta, theta0, rtol=0, atol=1e-13)
        chosen.add(res.candidate)
        increase_cons.append((after - before) / abs(before))
        theta.copy_(theta0)
        zo_step(groups, loss, seed, lr=lr, sign_mode=sign_mode, mode="aggressive")
        increase_aggr.append((float(loss()) - before) / abs(before))
    assert {"theta", "minus"} <= chosen  # "plus" cannot win on a quadratic: see the next test
    assert max(increase_cons) <= 1e-12 and max(increase_aggr) > 0.1  # rounding only


@pytest.mark.parametrize("sign_mode", ["scalar", "elementwise", "none"])
def test_conservative_is_bit_exact_in_exact_restore_regime(sign_mode):
    """|θ| ≫ lr·|d| (or θ = 0): never increases the loss bit-for-bit, and θ is kept exactly."""
    a, b = quadratic()
    theta0 = torch.tensor([1.5, -0.75, 3.0, 0.0, -1.25], dtype=F64)
    chosen = set()
    for seed in range(40):
        theta = theta0.clone()
        groups = [ZOGroup("all", [theta], eps=1e-3)]
        loss = quad_loss([theta], a, b)
        res = zo_step(groups, loss, seed, lr=[1e-3, 1e-2][seed % 2], sign_mode=sign_mode)
        after = float(loss())
        assert after == res.loss_after <= res.loss == float(quad_loss([theta0], a, b)())
        assert (res.candidate == "theta") == torch.equal(theta, theta0)
        chosen.add(res.candidate)
    assert "minus" in chosen


def test_plus_candidate_wins_when_the_far_side_is_lower():
    """L = θ⁴ − θ² at θ = 0.1 slopes down towards +θ, but a step of 0.8 is better towards −θ."""
    theta = torch.tensor([0.1], dtype=F64)
    groups = [ZOGroup("all", [theta], eps=1e-4)]
    loss = lambda: (theta**4 - theta**2).sum()  # noqa: E731
    (z,) = directions(groups, 0)
    res = zo_step(groups, loss, 0, lr=0.8 / abs(z.item()))
    assert res.candidate == "plus" and theta.item() == pytest.approx(-0.7)
    assert res.loss_after == pytest.approx(-0.2499) and res.loss == pytest.approx(-0.0099)


def test_conservative_large_lr_keeps_theta_exactly():
    a, b = quadratic()
    theta = torch.zeros(5, dtype=F64)
    groups = [ZOGroup("all", [theta], eps=1e-3, weight_decay=0.5)]
    loss = quad_loss([theta], a, b)
    res = zo_step(groups, loss, 0, lr=100.0)
    assert res.candidate == "theta" and res.loss_after == res.loss == 0.0
    assert torch.equal(theta, torch.zeros(5, dtype=F64))
    aggr = zo_step(groups, loss, 0, lr=100.0, mode="aggressive")
    assert aggr.candidate == "aggressive" and aggr.loss_after is None and float(loss()) > 1.0


def test_step_randomness_is_shared_by_all_evaluations():
    """With dropout in the loss, the reported candidate loss equals the seeded loss at the final θ."""
    w, c, _, _ = linear_mse()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(9), dtype=F64)

    def loss() -> torch.Tensor:
        h = torch.nn.functional.dropout(x @ w.T + c, p=0.3, training=True)  # (16, 3)
        return (h**2).mean()

    groups = [ZOGroup("w", [w], eps=1e-3), ZOGroup("c", [c], eps=1e-3)]
    for seed in range(10):
        res = zo_step(groups, loss, seed, lr=0.05, rng_seed_for_model=1234)
        # same randomness, two code paths: equal up to float64 rounding (1 ulp seen on CUDA); another
        # dropout mask would change the loss by ~10 %
        assert res.loss_after == pytest.approx(float(seeded(loss, 1234)()), rel=1e-12, abs=0)
        assert res.loss_after <= res.loss


def test_weight_decay_only_on_matrices_of_accepted_moves():
    w, c, loss, _ = linear_mse()
    w0, c0 = w.clone(), c.clone()
    groups = [ZOGroup("all", [w, c], eps=1e-3)]
    res = zo_step(groups, loss, 0, lr=0.01)
    assert res.candidate != "theta"
    w_nodecay, c_nodecay = w.clone(), c.clone()
    w.copy_(w0), c.copy_(c0)
    groups = [ZOGroup("all", [w, c], eps=1e-3, weight_decay=0.1)]
    assert zo_step(groups, loss, 0, lr=0.01).candidate == res.candidate
    assert torch.equal(c, c_nodecay)
    assert torch.equal(w, w_nodecay * (1.0 - 0.01 * 0.1))
    apply_weight_decay([ZOGroup("all", [c], eps=1e-3, weight_decay=0.1)], lr=0.01)
    assert torch.equal(c, c_nodecay)


# --------------------------------------------------------------------------- seeded closures


def test_seeded_closure_repeats_dropout_and_keeps_global_rng():
    x = torch.randn(100)
    loss = lambda: torch.nn.functional.dropout(x, p=0.5, training=True).sum()  # noqa: E731
    state = torch.get_rng_state()
    fn = seeded(loss, 3)
    values = [float(fn()) for _ in range(3)]
    assert values[0] == values[1] == values[2]
    assert torch.equal(torch.get_rng_state(), state)
    assert float(seeded(loss, 4)()) != values[0]
    assert float(loss()) != float(loss())  # unseeded: fresh masks, so the check above can fail


def test_estimate_probes_see_identical_model_randomness():
    theta = torch.zeros(3)
    seen = []

    def loss() -> float:
        seen.append(torch.rand(1).item())
        return float(theta.sum())

    zo_estimate([ZOGroup("all", [theta], eps=0.1)], loss, 0, q=2)
    assert len(seen) == 5 and len(set(seen)) == 1


# --------------------------------------------------------------------------- validation and helpers


def test_validation_errors():
    p = torch.zeros(2)
    with pytest.raises(ValueError, match="eps=0"):
        ZOGroup("v", [p], eps=0)
    with pytest.raises(ValueError, match="weight_decay=-1"):
        ZOGroup("v", [p], eps=1e-3, weight_decay=-1)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        ZOGroup("v", [torch.zeros(2, dtype=torch.int64)], eps=1e-3)
    groups = [ZOGroup("v", [p], eps=1e-3)]
    with pytest.raises(ValueError, match="q=0: expected an int >= 1"):
        zo_estimate(groups, lambda: 0.0, 0, q=0)
    with pytest.raises(ValueError, match="sign_mode='sgn': expected one of scalar, elementwise, none"):
        zo_step(groups, lambda: 0.0, 0, lr=0.1, sign_mode="sgn")
    with pytest.raises(ValueError, match="mode='greedy': expected one of conservative, aggressive"):
        zo_step(groups, lambda: 0.0, 0, lr=0.1, mode="greedy")


def test_params_outside_autograd_restores_flags():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2)
    with params_outside_autograd([a, b]) as ps:
        assert ps == [a, b] and not a.requires_grad and not b.requires_grad
    assert a.requires_grad and not b.requires_grad


# --------------------------------------------------------------------------- model randomness vs directions


def _noise_toy(dim: int = 4):
    """L(θ) = Σ_i n_i² θ_i with n ~ N(0, I) drawn *inside* the loss (like router noise): ∇E[L] = 1."""
    theta = torch.zeros(dim, dtype=F64)

    def loss() -> torch.Tensor:
        n = torch.randn(dim, dtype=F64)  # global RNG: seeded by zo_estimate's model seed
        return (n**2 * theta).sum()

    return theta, loss


def test_default_model_seed_is_not_the_direction_seed_and_the_estimate_is_unbiased():
    theta, loss = _noise_toy()
    groups = [ZOGroup("all", [theta], eps=1e-3)]
    assert all(model_seed_for(s) != s for s in range(100))
    (avg,) = mean_estimate(groups, loss, 3000)
    assert rel_err(avg, torch.ones(4, dtype=F64)) < 0.15
    # seeding the model with the direction's seed makes n == z: E[z_j⁴] = 3 instead of 1
    total = torch.zeros(4, dtype=F64)
    for s in range(3000):
        est = zo_estimate(groups, loss, s, center_loss=False, rng_seed_for_model=s)
        total += gradient_estimate(groups, est, "none")[0]
    assert float((total / 3000).mean()) > 2.5


# --------------------------------------------------------------------------- per-group probes and step scales


def _two_group_linear():
    """L = a·θ_v + b·θ_l: every probe difference is exact, p_v = ε_v z_v·a, p_l = ε_l z_l·b."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, generator=g, dtype=F64), torch.randn(2, generator=g, dtype=F64)
    tv, tl = torch.zeros(3, dtype=F64), torch.zeros(2, dtype=F64)
    groups = [ZOGroup("vision", [tv], eps=1e-3), ZOGroup("language", [tl], eps=4e-3)]
    return groups, (lambda: a @ tv + b @ tl), a, b


def test_per_group_probe_gives_each_group_its_own_difference():
    groups, loss, a, b = _two_group_linear()
    moved = []

    def counted() -> torch.Tensor:
        moved.append(tuple(bool(g.params[0].abs().sum() > 0) for g in groups))
        return loss()

    signs_differ = False
    for seed in range(20):
        zv, zl = directions(groups, seed)
        pv, pl = 1e-3 * float(zv @ a), 4e-3 * float(zl @ b)
        joint = zo_estimate(groups, loss, seed)
        assert joint.per_group is None and joint.projected[0] == pytest.approx(pv + pl, rel=1e-9)
        moved.clear()
        est = zo_estimate(groups, counted, seed, probe="per_group")
        assert est.per_group[0][0] == pytest.approx(pv, rel=1e-9)
        assert est.per_group[1][0] == pytest.approx(pl, rel=1e-9)
        assert est.projected[0] == pytest.approx(pv + pl, rel=1e-9)
        # L(θ), then vision alone ±, then language alone ±
        assert moved == [(False, False), (True, False), (True, False), (False, True), (False, True)]
        dv, dl = gradient_estimate(groups, est, "scalar")
        assert torch.equal(dv, zv * math.copysign(1.0, pv)) and torch.equal(dl, zl * math.copysign(1.0, pl))
        signs_differ |= (pv > 0) != (pv + pl > 0)
    assert signs_differ  # the joint sign would have moved vision the wrong way at least once


def test_per_group_probe_uses_the_group_closures():
    groups, loss, _, _ = _two_group_linear()
    calls = {"full": 0, "vision": 0, "language": 0}

    def count(name):
        def fn():
            calls[name] += 1
            return loss()
        return fn

    est = zo_estimate(groups, count("full"), 3, q=2, probe="per_group",
                      group_loss_fns=[count("vision"), count("language")])
    assert calls == {"full": 1, "vision": 4, "language": 4} and len(est.per_group[0]) == 2
    with pytest.raises(ValueError, match="group_loss_fns: 1 closures for 2 groups"):
        zo_estimate(groups, loss, 3, probe="per_group", group_loss_fns=[loss])
    with pytest.raises(ValueError, match="probe='tower': expected one of joint, per_group"):
        zo_estimate(groups, loss, 3, probe="tower")


@pytest.mark.parametrize("sign_mode", ["scalar", "elementwise", "none"])
def test_step_scale_multiplies_only_its_groups_update(sign_mode):
    tv, tl = torch.zeros(6, dtype=F64), torch.zeros(4, dtype=F64)
    plain = [ZOGroup("vision", [tv.clone()], eps=1e-3), ZOGroup("language", [tl.clone()], eps=2e-3)]
    scaled = [ZOGroup("vision", [tv], eps=1e-3, step_scale=0.5), ZOGroup("language", [tl], eps=2e-3)]
    est = ZOEstimate(seeds=[4], projected=[0.3], loss=0.0)
    apply_update(plain, est, lr=0.1, sign_mode=sign_mode)
    apply_update(scaled, est, lr=0.1, sign_mode=sign_mode)
    assert torch.allclose(tv, 0.5 * plain[0].params[0], rtol=1e-15, atol=0)
    assert torch.equal(tl, plain[1].params[0])
    with pytest.raises(ValueError, match="step_scale=0"):
        ZOGroup("v", [tv], eps=1e-3, step_scale=0)


@pytest.mark.parametrize("sign_mode", ["scalar", "elementwise", "none"])
def test_aggressive_step_moves_by_minus_lr_times_the_direction(sign_mode):
    a, b = quadratic()
    changes = []
    for seed in range(30):
        theta0 = torch.randn(5, generator=torch.Generator().manual_seed(200 + seed), dtype=F64)
        theta = theta0.clone()
        groups = [ZOGroup("all", [theta], eps=1e-3)]
        loss = quad_loss([theta], a, b)
        before = float(loss())
        res = zo_step(groups, loss, seed, lr=1e-2, sign_mode=sign_mode, mode="aggressive")
        (d,) = gradient_estimate(groups, ZOEstimate(res.seeds, res.projected, res.loss), sign_mode)
        assert torch.allclose(theta, theta0 - 1e-2 * d, rtol=0, atol=1e-15)
        changes.append(float(loss()) - before)
    assert sum(changes) < 0 and sum(c < 0 for c in changes) >= 20  # a descent step, not an ascent


# --------------------------------------------------------------------------- host synchronisation


@pytest.mark.parametrize("mode", ["conservative", "aggressive"])
def test_step_reads_nothing_back_before_its_last_evaluation(monkeypatch, mode):
    """On a GPU every read of a device value (``float``, ``item``, ``bool``...) waits for the device; the
    step reads its figures back only after its last loss evaluation and update are enqueued."""
    w, c, loss, _ = linear_mse()
    groups = [ZOGroup("a", [w], eps=1e-3), ZOGroup("b", [c], eps=5e-4, weight_decay=0.1)]
    reads = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **kw):
            reads.append(_name)
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    reads_at_call = []

    def watched() -> torch.Tensor:
        reads_at_call.append(len(reads))
        return loss()

    res = zo_step(groups, watched, seed=3, lr=1e-2, mode=mode, sign_mode="scalar")
    assert reads_at_call == [0] * len(reads_at_call) and len(reads_at_call) == (5 if mode == "conservative" else 2)
    monkeypatch.undo()
    assert res.candidate in ("theta", "minus", "plus", "aggressive") and math.isfinite(res.loss)


@pytest.mark.parametrize("mode", ["conservative", "aggressive", "probe"])
def test_cached_directions_give_the_same_step_bit_for_bit(mode):
    """z drawn once per step (Directions) or replayed from the seed at every use: the same update."""
    results = []
    for cache in (True, False):
        w, c, loss, _ = linear_mse()
        groups = [ZOGroup("a", [w], eps=1e-3, weight_decay=0.1), ZOGroup("b", [c], eps=5e-4)]
        res = zo_step(groups, loss, seed=9, lr=1e-2, q=2, mode=mode, cache_directions=cache)
        results.append((res, w.clone(), c.clone()))
    (r1, w1, c1), (r2, w2, c2) = results
    assert torch.equal(w1, w2) and torch.equal(c1, c2)
    assert (r1.loss, r1.projected, r1.candidate) == (r2.loss, r2.projected, r2.candidate)
