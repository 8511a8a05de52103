"""MoZO's base unit, the MoE adapter of MoE-Adapters4CL (strategies/clip/units.py), against hand formulas.

A_e(x) = 0.1 · up(dropout(relu(down(x)))); g = softmax(topk(x_0 W_gate + ε·(softplus(x_0 W_noise) + 1e-2)))
with ε ~ N(0, 1) in training only; unit(x) = Σ_e g_e A_e(x), fed the un-normalised residual stream.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strategies.clip.units import Adapter, MoEAdapter, ParallelUnitMLP, UnitsConfig

WIDTH, BOTTLENECK = 8, 4


def _moe(experts: int = 2, top_k: int = 2, dropout: float = 0.0, seed: int = 0) -> MoEAdapter:
    torch.manual_seed(seed)
    unit = MoEAdapter(WIDTH, UnitsConfig(kind="moe", experts=experts, top_k=top_k, bottleneck=BOTTLENECK,
                                         dropout=dropout, scale=0.1))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unit.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return unit


def _x(seed: int = 2) -> torch.Tensor:
    return torch.randn(3, 5, WIDTH, generator=torch.Generator().manual_seed(seed))  # (B, T, D)


def _expert(adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(x @ adapter.down.weight.T + adapter.down.bias)  # (B, T, bottleneck)
    return 0.1 * (h @ adapter.up.weight.T + adapter.up.bias)  # (B, T, D)


def test_moe_output_is_the_gated_sum_of_scaled_experts():
    unit = _moe().eval()
    x = _x()
    gates = torch.softmax(x[:, 0] @ unit.w_gate, dim=-1)  # (B, E): top-2 of 2 = dense softmax, token 0
    expected = sum(gates[:, e, None, None] * _expert(unit.experts[e], x) for e in range(2))
    assert torch.allclose(unit(x), expected, atol=1e-6)
    assert unit.experts[0].scale == 0.1


def test_router_reads_token_zero_only():
    unit = _moe().eval()
    x = _x()
    other = x.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])  # every token but 0 changed
    assert torch.equal(unit.gates(x), unit.gates(other))
    other[:, 0] += 1.0
    assert not torch.allclose(unit.gates(x), unit.gates(other))


def test_noisy_gating_in_training_only_with_its_std_formula():
    unit = _moe()
    x = _x()
    x0 = x[:, 0]
    torch.manual_seed(7)
    noise = torch.randn(3, 2)
    logits = x0 @ unit.w_gate + noise * (F.softplus(x0 @ unit.w_noise) + 1e-2)
    torch.manual_seed(7)
    assert torch.allclose(unit.train().gates(x), torch.softmax(logits, -1), atol=1e-6)
    assert torch.equal(unit.eval().gates(x), torch.softmax(x0 @ unit.w_gate, -1))


def test_top_k_keeps_the_k_largest_router_logits():
    unit = _moe(experts=3, top_k=2).eval()
    x = _x()
    logits = x[:, 0] @ unit.w_gate  # (B, 3)
    gates = unit.gates(x)
    top = logits.topk(2, dim=-1)
    expected = torch.zeros_like(logits).scatter(-1, top.indices, top.values.softmax(-1))
    assert torch.allclose(gates, expected, atol=1e-6) and bool(((gates == 0).sum(-1) == 1).all())


def test_expert_dropout_acts_on_the_hidden_units():
    """A mask over the bottleneck after ReLU (MoE-Adapters4CL); a mask on the input or output differs."""
    adapter = _moe(dropout=0.5).experts[0].train()
    x = _x()
    torch.manual_seed(3)
    hidden = F.dropout(F.relu(adapter.down(x)), p=0.5, training=True)  # (B, T, bottleneck)
    expected = 0.1 * adapter.up(hidden)
    torch.manual_seed(3)
    assert torch.equal(adapter(x), expected)
    torch.manual_seed(3)
    assert not torch.allclose(adapter(x), _expert(adapter, F.dropout(x, p=0.5, training=True)))


def test_unit_reads_the_unnormalised_residual_stream(tiny_model_factory):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    block = model.clip.visual.transformer.resblocks[0]
    assert isinstance(block.mlp, ParallelUnitMLP) and isinstance(block.ln_2, torch.nn.Identity)
    seen = {}
    block.mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("mlp", args[0]))
    block.mlp.unit.register_forward_pre_hook(lambda m, args: seen.__setitem__("unit", args[0]))
    model.encode_image(torch.randn(2, 3, 32, 32))
    assert torch.equal(seen["unit"], seen["mlp"])  # the residual stream itself, not ln_2 of it
    assert not torch.allclose(seen["unit"], block.mlp.norm(seen["mlp"]))


@pytest.mark.parametrize("kind", ["moe"])
def test_units_start_as_the_identity(tiny_model_factory, kind):
    model = tiny_model_factory(kind, dropout=0.0).eval()
    for unit in model.units.values():
        assert torch.equal(unit(torch.randn(2, 5, unit.w_gate.shape[0])), torch.zeros(2, 5, unit.w_gate.shape[0]))
        assert not unit.w_gate.abs().sum() and all(not e.up.weight.abs().sum() for e in unit.experts)
