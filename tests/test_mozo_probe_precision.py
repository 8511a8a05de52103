"""ZO probes under mixed precision (issue [speed] 1): the default probes in fp32 keep the estimate's sign.

With bf16 autocast, a two-sided difference at ε = 1e-3 is dominated by bf16 rounding (docs/speed.md,
"ZO probes under mixed precision": sign agreement about one half on clip-tiny-12l); MoZO's default
``probe_precision: fp32`` evaluates every ZO loss in fp32 while the FO forward and backward stay in bf16.
"""

from __future__ import annotations

import pytest
import torch

from strategies.mozo import MoZOConfig, MoZOPlugin
from strategies.mozo.zo import directions, zo_estimate

DIRECTIONS = 50


class _Batch:
    def __init__(self, model, x, y):
        self.model, self.mb_x, self.mb_y = model, x, y
        self._criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        self.plugins = []


def _model(tiny_model_factory):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for unit in model.units.values():
            for p in unit.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(p.device) * 0.05)
    model.invalidate_text_cache()
    return model


def _agreement(model, plugin, batch):
    """Sign agreement of the plugin's two-sided probe differences with zᵀD∇L (autograd, fp32)."""
    params = [p for g in plugin.groups for p in g.params]
    for p in params:
        p.requires_grad_(True)
    with model.precision_scope("fp32"):
        loss = batch._criterion(model(batch.mb_x), batch.mb_y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p in params:
        p.requires_grad_(False)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    eps = [g.eps for g in plugin.groups for _ in g.params]
    agree = 0
    for i in range(DIRECTIONS):
        zs = directions(plugin.groups, 100 + i)
        exact = sum(float((g * z).sum()) * e for g, z, e in zip(grads, zs, eps, strict=True))
        with plugin.probe_scope(model):
            full, _ = plugin.closures(batch, 7)
            est = zo_estimate(plugin.groups, full, 100 + i, center_loss=False)
        agree += (exact > 0) == (est.projected[0] > 0)
    return agree / DIRECTIONS


def test_default_probe_precision_keeps_the_sign_under_bf16_training(tiny_model_factory):
    model = _model(tiny_model_factory)
    device = model.device
    model.set_precision("bf16")
    plugin = MoZOPlugin(MoZOConfig(branch="dual", layers="all", vision_perturbation="joint"))
    plugin.attach(model)
    batch = _Batch(model, torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device),
                   torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(3)).to(device))
    assert plugin.probe_precision(model) == "fp32"
    seen = []
    block = model.clip.visual.transformer.resblocks[0].mlp
    handle = block.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    with plugin.probe_scope(model):
        plugin.closures(batch, 7)[0]()
    handle.remove()
    assert seen == [torch.float32]  # the probe really ran without autocast
    assert model.precision == "bf16"  # and the training precision is back after the scope
    assert _agreement(model, plugin, batch) >= 0.95


def test_train_probe_precision_runs_the_probes_in_bf16(tiny_model_factory):
    model = _model(tiny_model_factory)
    model.set_precision("bf16")
    plugin = MoZOPlugin(MoZOConfig(branch="dual", layers="all", probe_precision="train"))
    plugin.attach(model)
    assert plugin.probe_precision(model) == "bf16"
    seen = []
    block = model.clip.visual.transformer.resblocks[0].mlp
    handle = block.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    batch = _Batch(model, torch.randn(4, 3, 32, 32).to(model.device), torch.tensor([0, 1, 2, 0]).to(model.device))
    with plugin.probe_scope(model):
        plugin.closures(batch, 7)[0]()
    handle.remove()
    assert seen == [torch.bfloat16]


def test_fp32_probes_refuse_a_low_precision_backbone(tiny_model_factory):
    model = _model(tiny_model_factory)
    model.storage_precision = "bf16"  # as build_clip sets it for model.precision: bf16
    plugin = MoZOPlugin(MoZOConfig())
    with pytest.raises(ValueError, match="probe_precision: fp32 needs model.precision: fp32"):
        plugin.before_training(_Batch(model, None, None))


def test_fp32_probes_with_a_bf16_backbone_is_a_config_error(tmp_path):
    from runs.config import ConfigError, load_suite

    text = """name: p
output_dir: outputs
defaults:
  model: {arch: clip-tiny, pretrained: none, units: {kind: moe, bottleneck: 8}, precision: bf16}
  stream: {name: synthetic, n_classes: 4, n_experiences: 2, train_per_class: 8, test_per_class: 4}
  train: {batch_size: 8, device: cpu, precision: bf16}
  data_root: .
runs:
  - method: mozo
"""
    (tmp_path / "suite.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"suite.yaml: runs\[0\].method.probe_precision = 'fp32' needs "
                                          r"model.precision = 'fp32' \(got 'bf16'"):
        load_suite(tmp_path / "suite.yaml")
    train_probes = text.replace("  - method: mozo", "  - method: {name: mozo, probe_precision: train}")
    (tmp_path / "suite.yaml").write_text(train_probes)
    assert load_suite(tmp_path / "suite.yaml").runs[0].method.cfg.probe_precision == "train"


def test_zo_units_stay_float32_through_a_bf16_mozo_step(tiny_model_factory):
    """Autocast never casts the parameters themselves: the ZO units (outside autograd) and the FO units
    are float32 after a step whose FO forward and backward ran under bf16."""
    from test_mozo_step_cost import _train

    model = _model(tiny_model_factory).train()
    model.set_precision("bf16")
    plugin, _ = _train(model, True, 1)  # one iteration of Naive + MoZOPlugin (runs.harness)
    assert plugin.last is not None and plugin.groups
    assert all(p.dtype == torch.float32 for g in plugin.groups for p in g.params)
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               for p in model.trainable_parameters())
