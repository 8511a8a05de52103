"""Merging baselines' maths on toy task vectors: each rule against hand-computed values (TIES trimming over
the whole model, sign election with the majority for zero sums, disjoint mean; MagMax max-|δ|; Task
Arithmetic λ), and the bounded-memory paths against their unchunked oracles bit for bit."""

from __future__ import annotations

import pytest
import torch

from strategies.condu.fusion import kth_magnitude, kth_magnitude_reference, max_magnitude_into
from strategies.merging.config import MagMaxConfig, TaskArithmeticConfig, TIESConfig
from strategies.merging.maths import (
    add_delta_into,
    magmax_reference,
    scaled_merge_into,
    ties_merge_into,
    ties_reference,
    trim,
    trim_rank,
)
from strategies.merging.merges import make_merge


def _zeros_like(model):
    return {k: torch.zeros_like(v) for k, v in model.items()}


def _plus(theta0, delta):
    return {k: theta0[k] + delta[k] for k in theta0}


def _random_model(seed: int, shapes=((3000,), (40, 70), (5,), (9000,))):
    g = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)}


# ---- TIES: trim ---------------------------------------------------------------------------------------------


def test_trim_keeps_the_top_k_percent_over_the_whole_model_not_per_tensor():
    theta0 = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    delta = {"a": torch.tensor([0.1, -0.5, 0.05]), "b": torch.tensor([[0.3, -0.02], [0.0, 0.4]])}
    # 7 entries, k = 40%: rank 7 - int(2.8) = 5 of |δ| sorted (0, .02, .05, .1, .3, .4, .5) -> threshold 0.3
    assert trim_rank(7, 40) == 5
    trimmed = trim(_plus(theta0, delta), theta0, 40)
    assert trimmed.threshold == pytest.approx(0.3)
    dense = trimmed.dense()
    torch.testing.assert_close(dense["a"], torch.tensor([0.0, -0.5, 0.0]))  # per tensor, a would keep 0.1 too
    torch.testing.assert_close(dense["b"], torch.tensor([[0.3, 0.0], [0.0, 0.4]]))
    assert [v.numel() for v in trimmed.values.values()] == [1, 2]  # stored sparse: kept values only


def test_trim_rank_follows_the_authors_topk_values_mask():
    assert trim_rank(1000, 20) == 800  # d - int(d * 0.2): keeps int(d * 0.2) + 1 without ties
    assert trim_rank(10, 100) == 1  # keep everything
    with pytest.raises(ValueError, match="k must be in"):
        trim_rank(10, 0)


@pytest.mark.parametrize("k", [1, 57, 1000, 8000, 14800])
@pytest.mark.parametrize("chunk_bytes", [None, 1, 300_000])
def test_kth_magnitude_in_bounded_chunks_equals_kthvalue_of_the_whole_model(k, chunk_bytes):
    theta0 = _random_model(0)
    theta = {key: v + 0.01 * torch.randn_like(v) for key, v in theta0.items()}
    theta["p0"][:200] = theta0["p0"][:200]  # exact zeros (ties at the bottom)
    theta["p3"][:50] = theta0["p3"][:50] + 0.25  # equal magnitudes (ties)
    delta = {key: theta[key] - theta0[key] for key in theta}
    assert torch.equal(kth_magnitude(theta, theta0, k, chunk_bytes=chunk_bytes), kth_magnitude_reference(delta, k))


def test_kth_magnitude_refuses_a_rank_outside_the_model():
    model = {"a": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        kth_magnitude(model, model, 5)


# ---- TIES: elect, disjoint mean, merge ------------------------------------------------------------------------


def test_ties_elects_signs_with_the_majority_for_zero_sums_and_averages_disjointly():
    theta0 = {"x": torch.zeros(5)}
    deltas = [{"x": torch.tensor([1.0, -2.0, 3.0, 0.0, 0.5])},
              {"x": torch.tensor([2.0, 1.0, -1.0, 0.0, 0.5])},
              {"x": torch.tensor([-4.0, 1.0, -1.0, 0.0, 0.5])}]
    # sums (-1, 0, 1, 0, 1.5): signs (-, 0, +, 0, +); majority + (2 vs 1) -> (-, +, +, +, +)
    # disjoint means: -4 (only δ3 agrees), (1 + 1)/2, 3, 0 (nothing agrees), 0.5
    expected = torch.tensor([-4.0, 1.0, 3.0, 0.0, 0.5])
    torch.testing.assert_close(ties_reference(deltas, 100)["x"], expected)
    trims = [trim(_plus(theta0, d), theta0, 100) for d in deltas]
    params = _zeros_like(theta0)
    ties_merge_into(params, theta0, trims, 0.5)
    torch.testing.assert_close(params["x"], 0.5 * expected)


def test_ties_with_a_negative_majority_gives_zero_sums_the_negative_sign():
    theta0 = {"x": torch.zeros(4)}
    deltas = [{"x": torch.tensor([-1.0, 2.0, -1.0, -1.0])}, {"x": torch.tensor([-1.0, -2.0, -1.0, -1.0])}]
    # sums (-2, 0, -2, -2): majority -, so entry 1 keeps the negative δ2 = -2
    expected = torch.tensor([-1.0, -2.0, -1.0, -1.0])
    torch.testing.assert_close(ties_reference(deltas, 100)["x"], expected)
    params = _zeros_like(theta0)
    ties_merge_into(params, theta0, [trim(_plus(theta0, d), theta0, 100) for d in deltas], 1.0)
    torch.testing.assert_close(params["x"], expected)


@pytest.mark.parametrize("k", [20, 3.5, 100])
@pytest.mark.parametrize("chunk_bytes", [None, 1, 200_000])
def test_bounded_memory_ties_equals_the_unchunked_reference_bit_for_bit(k, chunk_bytes):
    theta0 = _random_model(1)
    thetas = [{key: v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(10 * t + i))
               for i, (key, v) in enumerate(theta0.items())} for t in range(3)]
    trims = [trim(theta, theta0, k, chunk_bytes=chunk_bytes) for theta in thetas]
    params = _zeros_like(theta0)
    ties_merge_into(params, theta0, trims, 0.55, chunk_bytes=chunk_bytes)
    tau = ties_reference([{key: th[key] - theta0[key] for key in th} for th in thetas], k)
    lam = torch.tensor(0.55, dtype=torch.float32)
    for key in theta0:
        assert torch.equal(params[key], theta0[key] + tau[key] * lam), key


# ---- MagMax -----------------------------------------------------------------------------------------------------


def test_magmax_keeps_the_largest_magnitude_and_the_later_task_on_ties():
    theta0 = {"x": torch.zeros(4)}
    deltas = [torch.tensor([1.0, -3.0, 2.0, 0.0]), torch.tensor([-2.0, 1.0, -2.0, 0.0])]
    tau = {"x": torch.zeros(4)}
    for d in deltas:
        max_magnitude_into(tau, {"x": d}, theta0)
    torch.testing.assert_close(tau["x"], torch.tensor([-2.0, -3.0, -2.0, 0.0]))  # |2| = |-2|: the later task
    torch.testing.assert_close(magmax_reference([{"x": d} for d in deltas])["x"], tau["x"])


@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_chunked_max_magnitude_equals_the_authors_left_fold(chunk_bytes):
    theta0 = _random_model(2)
    deltas = [{key: torch.randn_like(v) for key, v in theta0.items()} for _ in range(4)]
    deltas[2]["p1"][:3] = -deltas[1]["p1"][:3]  # equal magnitudes
    tau = _zeros_like(theta0)
    for d in deltas:
        max_magnitude_into(tau, _plus(theta0, d), theta0, chunk_bytes=chunk_bytes)
    expected = magmax_reference([{key: (theta0[key] + d[key]) - theta0[key] for key in d} for d in deltas])
    for key in theta0:
        assert torch.equal(tau[key], expected[key]), key


# ---- Task Arithmetic and the scaled merge ----------------------------------------------------------------------


def test_task_arithmetic_sums_the_deltas_and_scales_by_lambda():
    theta0 = {"x": torch.tensor([1.0, 1.0])}
    tau = _zeros_like(theta0)
    for d in (torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])):
        add_delta_into(tau, {"x": theta0["x"] + d}, theta0)
    torch.testing.assert_close(tau["x"], torch.tensor([4.0, 1.0]))
    params = _zeros_like(theta0)
    scaled_merge_into(params, theta0, tau, 0.3)
    torch.testing.assert_close(params["x"], torch.tensor([1.0 + 1.2, 1.0 + 0.3]))


# ---- the merges, as the plugin drives them ------------------------------------------------------------------------


def _drive(cfg, deltas_by_task, theta0):
    """start_task -> 'train' (θ = start + δ_t) -> add -> load_merged, per task; returns starts and merged models."""
    params = {k: v.clone() for k, v in theta0.items()}
    merge = make_merge(params, cfg)
    starts, merged = [], []
    for delta in deltas_by_task:
        merge.start_task()
        starts.append({k: v.clone() for k, v in params.items()})
        for k in params:
            params[k] += delta[k]
        merge.add()
        merge.load_merged()
        merged.append({k: v.clone() for k, v in params.items()})
    return merge, starts, merged


def test_task_arithmetic_default_lambda_is_one_over_t_and_a_number_is_used_as_is():
    theta0 = {"x": torch.tensor([0.5, -0.5])}
    steps = [{"x": torch.tensor([1.0, 2.0])}, {"x": torch.tensor([3.0, -1.0])}]
    _, starts, merged = _drive(TaskArithmeticConfig(), steps, theta0)
    assert all(torch.equal(s["x"], theta0["x"]) for s in starts)  # every task from θ⁰
    torch.testing.assert_close(merged[0]["x"], theta0["x"] + steps[0]["x"])  # λ = 1/1
    torch.testing.assert_close(merged[1]["x"], theta0["x"] + torch.tensor([2.0, 0.5]))  # λ = 1/2 of (4, 1)
    _, _, merged = _drive(TaskArithmeticConfig(scaling=0.3), steps, theta0)
    torch.testing.assert_close(merged[1]["x"], theta0["x"] + 0.3 * torch.tensor([4.0, 1.0]))


def test_magmax_fine_tunes_sequentially_and_merges_task_vectors_relative_to_theta0():
    theta0 = {"x": torch.tensor([0.0, 0.0, 0.0])}
    steps = [{"x": torch.tensor([1.0, -3.0, 2.0])}, {"x": torch.tensor([-2.0, 4.0, -1.0])}]
    merge, starts, merged = _drive(MagMaxConfig(scaling=0.5), steps, theta0)
    assert torch.equal(starts[0]["x"], theta0["x"])
    assert torch.equal(starts[1]["x"], torch.tensor([1.0, -3.0, 2.0]))  # θ_1, not the merge
    # task vectors relative to θ⁰: τ1 = (1, -3, 2), τ2 = θ_2 - θ⁰ = (-1, 1, 1); max-|δ| (equal: the later) (-1, -3, 2)
    torch.testing.assert_close(merged[1]["x"], 0.5 * torch.tensor([-1.0, -3.0, 2.0]))
    assert torch.equal(merge.last["x"], torch.tensor([-1.0, 1.0, 1.0]))


def test_ties_merge_starts_each_task_from_theta0_and_uses_k_and_lambda():
    theta0 = {"x": torch.zeros(5)}
    steps = [{"x": torch.tensor([1.0, -2.0, 3.0, 0.1, 0.5])}, {"x": torch.tensor([2.0, 1.0, -1.0, 0.2, 0.5])}]
    merge, starts, merged = _drive(TIESConfig(k=40, scaling=2.0), steps, theta0)
    assert all(torch.equal(s["x"], theta0["x"]) for s in starts)
    # k = 40% of 5 entries: rank 5 - 2 = 3 -> keeps |δ| >= 3rd smallest: δ1 (1, -2, 3) ; δ2 (2, 1, -1)
    torch.testing.assert_close(merge.trims[0].dense()["x"], torch.tensor([1.0, -2.0, 3.0, 0.0, 0.0]))
    torch.testing.assert_close(merge.trims[1].dense()["x"], torch.tensor([2.0, 1.0, -1.0, 0.0, 0.0]))
    # sums (3, -1, 2, 0, 0) -> signs (+, -, +, maj +, maj +); means (1.5, -2, 3, 0, 0); λ = 2
    torch.testing.assert_close(merged[1]["x"], torch.tensor([3.0, -4.0, 6.0, 0.0, 0.0]))


@pytest.mark.parametrize("cfg", [TaskArithmeticConfig(), TIESConfig(), MagMaxConfig()], ids=lambda c: type(c).__name__)
def test_extra_state_equals_the_bytes_the_merge_stores(cfg):
    import io

    from strategies.cost import tensor_bytes

    theta0 = _random_model(3)
    steps = [{k: torch.randn_like(v) for k, v in theta0.items()} for _ in range(2)]
    merge, _, _ = _drive(cfg, steps, theta0)
    stored = merge.stored()
    assert sum(stored.values()) == tensor_bytes(merge.state_dict()) + tensor_bytes(merge.theta0)
    buffer = io.BytesIO()
    torch.save(merge.state_dict(), buffer)
    buffer.seek(0)
    again = make_merge({k: v.clone() for k, v in theta0.items()}, cfg)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert again.stored() == stored
