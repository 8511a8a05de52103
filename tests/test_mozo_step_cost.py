"""The cheaper MoZO step: L(θ), image features and prefix activations from the FO forward (issue [speed] 3).

Every test trains through the bench harness (:mod:`runs.harness`, the one ``python -m runs bench mozo``
times): Avalanche's ``Naive`` with ``MoZOPlugin``, on a one-experience stream whose every minibatch is
(X, Y), on the tiny CLIP with dropout and noisy router gating, so the step's model randomness is real.
What a test observes (per-step results, tower forwards, random draws) it records with a plugin of its
own next to MoZO's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from avalanche.core import SupervisedPlugin

from runs import harness
from strategies.mozo import MoZOConfig, MoZOPlugin

X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


class _Results(SupervisedPlugin):
    """The plugin's result of every step (read after the optimizer step)."""

    def __init__(self, plugin: MoZOPlugin) -> None:
        super().__init__()
        self.plugin, self.steps = plugin, []

    def after_update(self, strategy, **kwargs):
        self.steps.append(self.plugin.last)


def _train(model, reuse, iterations, *, probes=(), **options):
    """``iterations`` training iterations of Naive + MoZOPlugin(seed 5) through :func:`runs.harness.run_steps`;
    returns the plugin and its per-step results."""
    plugin = MoZOPlugin(MoZOConfig(**options), seed=5, reuse_forward=reuse)
    results = _Results(plugin)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05)
    strategy = harness.naive(model, optimizer, batch_size=len(X), device=model.device,
                             plugins=[*probes, plugin, results])
    torch.manual_seed(0)  # the template's data loader draws from the global generator: the same for every run
    harness.run_steps(strategy, harness.repeated_minibatch(X, Y, iterations))
    return plugin, results.steps


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
    _, fast_steps = _train(fast_model, True, 3, **options)
    _, ref_steps = _train(ref_model, False, 3, **options)
    assert len(fast_steps) == len(ref_steps) == 3
    for fast, ref in zip(fast_steps, ref_steps, strict=True):
        assert fast.candidate == ref.candidate
        assert fast.loss == pytest.approx(ref.loss, rel=1e-6)
        assert fast.projected == pytest.approx(ref.projected, rel=1e-5, abs=1e-9)
    for (name, p), q in zip(fast_model.named_parameters(), ref_model.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name


class _Forwards(SupervisedPlugin):
    """Tower forwards (forward hooks on the image tower and the text transformer) of iteration
    ``iteration``: in its FO forward (up to ``after_forward``) and in the whole iteration."""

    def __init__(self, model, iteration: int = 1) -> None:
        super().__init__()
        self.calls, self.iteration, self.index, self.counting = {"image": 0, "text": 0}, iteration, 0, False
        self.forward: dict[str, int] = {}
        self.total: dict[str, int] = {}
        text_tower = getattr(model.clip, "text", model.clip).transformer
        model.clip.visual.register_forward_hook(lambda *_: self._count("image"))
        text_tower.register_forward_hook(lambda *_: self._count("text"))

    def _count(self, tower: str) -> None:
        if self.counting:
            self.calls[tower] += 1

    def before_training_iteration(self, strategy, **kwargs):
        self.counting = self.index == self.iteration

    def after_forward(self, strategy, **kwargs):
        if self.counting:
            self.forward = dict(self.calls)

    def after_training_iteration(self, strategy, **kwargs):
        if self.counting:
            self.total = dict(self.calls)
        self.counting, self.index = False, self.index + 1


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
def test_default_step_spends_four_zo_forwards(tiny_model_factory, reuse, options, expected):
    model = _noisy_model(tiny_model_factory)
    counter = _Forwards(model, iteration=1)  # the first iteration lets the text cache etc. settle
    _train(model, reuse, 2, probes=[counter], **options)
    forward = counter.forward
    assert forward == {"image": 1, "text": 1}  # the FO forward itself
    assert {k: counter.total[k] - forward[k] for k in forward} == expected


@pytest.mark.parametrize(("reuse", "layers", "expected"), [
    (True, "hop-even", 1),  # ZO units in layer 2 (of 2): block 1 runs once per step, in the FO forward
    (False, "hop-even", 6),  # and in L(θ), 2 probes, 2 candidates of the reference step
    (True, "all", 5),  # no block below the lowest ZO layer: nothing to reuse
])
def test_blocks_below_the_lowest_zo_layer_run_once_per_step(tiny_model_factory, reuse, layers, expected):
    model = _noisy_model(tiny_model_factory)
    block = model.clip.visual.transformer.resblocks[0]
    calls = []
    block.register_forward_hook(lambda *_: calls.append(1))
    plugin, _ = _train(model, reuse, 1, branch="vision", layers=layers, vision_perturbation="joint")
    assert len(calls) == expected
    assert plugin.prefix is not None and not plugin.prefix.recorded  # released after the step


def test_probe_candidate_keeps_the_best_probe_point(tiny_model_factory):
    model = _noisy_model(tiny_model_factory)
    _, steps = _train(model, True, 4, candidate="probe", vision_perturbation="joint", sign="none")
    assert len(steps) == 4
    for res in steps:
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
    _, fast_steps = _train(fast_model, True, 2)
    _, ref_steps = _train(ref_model, False, 2)
    for fast, ref in zip(fast_steps, ref_steps, strict=True):
        assert fast.candidate == ref.candidate
        assert fast.loss == pytest.approx(ref.loss, rel=1e-5)
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


class _Draws(SupervisedPlugin):
    """Counts dropout-mask and router-noise draws of the ZO step: patched in after the FO backward,
    restored after the optimizer step."""

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        self.monkeypatch, self.draws = monkeypatch, {"dropout": 0, "router": 0}

    def after_backward(self, strategy, **kwargs):
        real_dropout, real_randn = torch.native_dropout, torch.randn_like

        def dropout(*a, **kw):
            self.draws["dropout"] += 1
            return real_dropout(*a, **kw)

        def randn_like(*a, **kw):
            self.draws["router"] += 1
            return real_randn(*a, **kw)

        self.monkeypatch.setattr(torch, "native_dropout", dropout)
        self.monkeypatch.setattr(torch, "randn_like", randn_like)

    def after_update(self, strategy, **kwargs):
        self.monkeypatch.undo()


@pytest.mark.parametrize(("reuse", "zero"), [(True, True), (False, False)])
def test_zo_evaluations_replay_the_fo_forwards_unit_noise(tiny_model_factory, monkeypatch, reuse, zero):
    """Dropout masks and router noise are drawn once, in the FO forward, and replayed by every ZO
    evaluation of the step (NoiseTape); the reference step draws them again each time (same values:
    the equality test above)."""
    model = _noisy_model(tiny_model_factory)
    draws = _Draws(monkeypatch)
    plugin, _ = _train(model, reuse, 1, probes=[draws])
    assert (plugin.tape is not None) == reuse
    assert (draws.draws == {"dropout": 0, "router": 0}) == zero, draws.draws
    assert plugin.tape is None or not plugin.tape.store  # released after the step


def test_backbone_dropout_turns_the_noise_tape_off(tiny_model_factory):
    model = _noisy_model(tiny_model_factory)
    model.clip.visual.transformer.resblocks[0].attn.dropout = 0.1  # attention dropout in the backbone
    plugin, _ = _train(model, True, 1)
    assert plugin.tape is None


def test_bench_mozo_and_the_step_cost_tests_drive_the_same_harness(tiny_model_factory, monkeypatch):
    """``python -m runs bench mozo`` (:func:`runs.bench.measure`) and these tests time / observe steps
    through one function, :func:`runs.harness.run_steps`, on a real Avalanche template."""
    from avalanche.training.templates import SupervisedTemplate

    from runs import bench

    assert bench.harness is harness
    seen = []
    real = harness.run_steps

    def spy(strategy, experience, **kw):
        seen.append(strategy)
        return real(strategy, experience, **kw)

    monkeypatch.setattr(harness, "run_steps", spy)
    bench.measure("MoZO", steps=1, warmup=0)
    _train(_noisy_model(tiny_model_factory), True, 1)
    assert len(seen) == 2 and all(isinstance(s, SupervisedTemplate) for s in seen)
    assert all(any(isinstance(p, MoZOPlugin) for p in s.plugins) for s in seen)
