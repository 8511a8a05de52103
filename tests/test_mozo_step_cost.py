"""The cheaper MoZO step: L(θ), image features and prefix activations from the FO forward (issue [speed] 3).

Every test runs the plugin in Avalanche's template order (before_training_iteration, forward,
after_forward, criterion, before_backward, backward, before_update, optimizer step), on the tiny CLIP
with dropout and noisy router gating, so the step's model randomness is real.
"""

from __future__ import annotations

import copy

import pytest
import torch

from strategies.mozo import MoZOConfig, MoZOPlugin

X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


class _Strategy:
    """What the plugin reads from an Avalanche strategy."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.mb_x, self.mb_y = X.to(model.device), Y.to(model.device)
        self._criterion = torch.nn.CrossEntropyLoss()
        self.clock = type("Clock", (), {"train_iterations": 0})()
        self.evaluator = type("Evaluator", (), {"publish_metric_value": lambda self, v: None})()
        self.plugins = []
        self.loss = self.mb_output = None


def _iteration(plugin, s):
    """One training iteration in the template's order."""
    s.optimizer.zero_grad(set_to_none=True)
    plugin.before_training_iteration(s)
    s.mb_output = s.model(s.mb_x)
    plugin.after_forward(s)
    s.loss = s._criterion(s.mb_output, s.mb_y)
    plugin.before_backward(s)
    s.loss.backward()
    plugin.before_update(s)
    s.optimizer.step()
    s.clock.train_iterations += 1


def _noisy_model(tiny_model_factory):
    model = tiny_model_factory("moe", dropout=0.3, noisy_gating=True).train()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # off the identity init, so units, their dropout and router noise matter
        for unit in model.units.values():
            for p in unit.parameters():
                if p.ndim == 2 and not p.abs().sum():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.invalidate_text_cache()
    return model


def _setup(model, reuse, **options):
    plugin = MoZOPlugin(MoZOConfig(**options), seed=5, reuse_forward=reuse)
    plugin.attach(model)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05)
    s = _Strategy(model, optimizer)
    plugin.before_training(s)
    return plugin, s


@pytest.mark.parametrize("options", [
    {},  # the default: dual, hop-even, per_tower, conservative
    {"vision_perturbation": "joint"},
    {"branch": "language", "layers": "all"},
    {"branch": "vision", "layers": "suffix-1"},
    {"candidate": "probe"},
])
def test_reused_forward_gives_the_reference_update(tiny_model_factory, options):
    """Same seeds → same ZO and FO updates as a step that computes L(θ), the image features and every
    block itself (its FO forward under the same model seed). Tolerance: 1e-6 relative (on CPU the two
    paths run the same kernels on the same inputs; a GPU may round the graph-building forward
    differently)."""
    base = _noisy_model(tiny_model_factory)
    fast_model, ref_model = base, copy.deepcopy(base)
    fast, fs = _setup(fast_model, True, **options)
    ref, rs = _setup(ref_model, False, **options)
    for _ in range(3):
        _iteration(fast, fs)
        _iteration(ref, rs)
        assert fast.last.candidate == ref.last.candidate
        assert fast.last.loss == pytest.approx(ref.last.loss, rel=1e-6)
        assert fast.last.projected == pytest.approx(ref.last.projected, rel=1e-5, abs=1e-9)
    for (name, p), q in zip(fast_model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name
    moved = [fast.last.candidate for _ in range(1)]
    assert moved  # at least the figures are there; the loop above compared every step


def _count_forwards(model, monkeypatch):
    calls = {"image": 0, "text": 0}
    image, text = model.clip.encode_image, model._encode_prompts

    def count(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(model.clip, "encode_image", count("image", image))
    monkeypatch.setattr(model, "_encode_prompts", count("text", text))
    return calls


@pytest.mark.parametrize(("reuse", "options", "expected"), [
    # per_tower (default): 2 vision probes, 2 language probes (other tower at θ reused), 2 candidates;
    # the reference also evaluates L(θ) (one image and one text forward)
    (True, {}, {"image": 4, "text": 4}), (False, {}, {"image": 5, "text": 5}),
    (True, {"vision_perturbation": "joint"}, {"image": 4, "text": 4}),
    (False, {"vision_perturbation": "joint"}, {"image": 5, "text": 5}),
    # language ZO: the image features at θ come from the FO forward, no image forward at all
    (True, {"branch": "language", "layers": "all"}, {"image": 0, "text": 4}),
    (False, {"branch": "language", "layers": "all"}, {"image": 1, "text": 4}),  # text at θ: the model's cache
    # candidates at the probe points: no candidate forward
    (True, {"candidate": "probe"}, {"image": 2, "text": 2}),
])
def test_default_step_spends_four_zo_forwards(tiny_model_factory, monkeypatch, reuse, options, expected):
    model = _noisy_model(tiny_model_factory)
    plugin, s = _setup(model, reuse, **options)
    _iteration(plugin, s)  # the text cache etc. settle
    calls = _count_forwards(model, monkeypatch)
    plugin.before_training_iteration(s)
    s.mb_output = model(s.mb_x)
    plugin.after_forward(s)
    forward = dict(calls)
    s.loss = s._criterion(s.mb_output, s.mb_y)
    plugin.before_backward(s)
    s.loss.backward()
    plugin.before_update(s)
    assert forward == {"image": 1, "text": 1}  # the FO forward itself
    assert {k: calls[k] - forward[k] for k in calls} == expected


@pytest.mark.parametrize(("reuse", "layers", "expected"), [
    (True, "hop-even", 1),  # ZO units in layer 2 (of 2): block 1 runs once per step, in the FO forward
    (False, "hop-even", 6),  # and in L(θ), 2 probes, 2 candidates of the reference step
    (True, "all", 5),  # no block below the lowest ZO layer: nothing to reuse
])
def test_blocks_below_the_lowest_zo_layer_run_once_per_step(tiny_model_factory, reuse, layers, expected):
    model = _noisy_model(tiny_model_factory)
    plugin, s = _setup(model, reuse, branch="vision", layers=layers, vision_perturbation="joint")
    block = model.clip.visual.transformer.resblocks[0]
    calls = []
    block.register_forward_hook(lambda *_: calls.append(1))
    _iteration(plugin, s)
    assert len(calls) == expected
    assert plugin.prefix is not None and not plugin.prefix.recorded  # released after the step


def test_probe_candidate_keeps_the_best_probe_point(tiny_model_factory):
    model = _noisy_model(tiny_model_factory)
    plugin, s = _setup(model, True, candidate="probe", vision_perturbation="joint", sign="none")
    for _ in range(4):
        _iteration(plugin, s)
        res = plugin.last
        assert res.candidate in ("theta", "probe") and res.loss_after <= res.loss


def test_probe_candidate_needs_two_sided_probes():
    with pytest.raises(ValueError, match="candidate='probe' needs two_sided: true"):
        MoZOConfig(candidate="probe", two_sided=False)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reused_forward_matches_the_reference_on_cuda(tiny_model_factory, precision):
    """On CUDA: fp32 training reuses the FO forward (4 ZO forwards); bf16 training with the default fp32
    probes recomputes L(θ) in fp32. Either way the update equals the from-scratch reference (the
    graph-building forward may round differently on a GPU: 1e-5)."""
    base = _noisy_model(tiny_model_factory).cuda()
    base.set_precision(precision)
    fast_model, ref_model = base, copy.deepcopy(base)
    fast, fs = _setup(fast_model, True)
    ref, rs = _setup(ref_model, False)
    for _ in range(2):
        _iteration(fast, fs)
        _iteration(ref, rs)
        assert fast.last.candidate == ref.last.candidate
        assert fast.last.loss == pytest.approx(ref.last.loss, rel=1e-5)
    for p, q in zip(fast_model.parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_mozo_bench_smoke_at_vit_b16_shapes_on_cuda():
    from runs.bench import bench_mozo

    table = bench_mozo(arch="ViT-B-16", batch_size=8, steps=1, device="cuda", warmup=1, isolate=False,
                       configs=("inference", "full FO", "MoZO"))
    rows = [line for line in table.splitlines() if line.startswith("| MoZO")]
    assert rows and "nan" not in rows[0]


def test_compiled_towers_are_not_replayed(tiny_model_factory):
    from strategies.mozo.prefix import PrefixCache

    model = _noisy_model(tiny_model_factory)
    keys = {("vision", 1), ("language", 1)}
    assert PrefixCache(model.clip, keys).lowest == {"vision": 1, "language": 1}
    model.compile_towers(backend="eager")  # nn.Module.compile is lazy: nothing is compiled until a forward
    assert PrefixCache(model.clip, keys).lowest == {}


@pytest.mark.parametrize(("reuse", "zero"), [(True, True), (False, False)])
def test_zo_evaluations_replay_the_fo_forwards_unit_noise(tiny_model_factory, monkeypatch, reuse, zero):
    """Dropout masks and router noise are drawn once, in the FO forward, and replayed by every ZO
    evaluation of the step (NoiseTape); the reference step draws them again each time (same values:
    the equality test above)."""
    model = _noisy_model(tiny_model_factory)
    plugin, s = _setup(model, reuse)
    assert (plugin.tape is not None) == reuse
    draws = {"dropout": 0, "router": 0}
    real_dropout, real_randn = torch.native_dropout, torch.randn_like

    def dropout(*a, **kw):
        draws["dropout"] += 1
        return real_dropout(*a, **kw)

    def randn_like(*a, **kw):
        draws["router"] += 1
        return real_randn(*a, **kw)

    s.optimizer.zero_grad(set_to_none=True)
    plugin.before_training_iteration(s)
    s.mb_output = model(s.mb_x)
    plugin.after_forward(s)
    s.loss = s._criterion(s.mb_output, s.mb_y)
    plugin.before_backward(s)
    s.loss.backward()
    monkeypatch.setattr(torch, "native_dropout", dropout)
    monkeypatch.setattr(torch, "randn_like", randn_like)
    plugin.before_update(s)
    assert (draws == {"dropout": 0, "router": 0}) == zero, draws
    assert plugin.tape is None or not plugin.tape.store  # released after the step


def test_backbone_dropout_turns_the_noise_tape_off(tiny_model_factory):
    model = _noisy_model(tiny_model_factory)
    model.clip.visual.transformer.resblocks[0].attn.dropout = 0.1  # attention dropout in the backbone
    plugin, _ = _setup(model, True)
    assert plugin.tape is None
