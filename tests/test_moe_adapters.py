"""MoE-Adapters (strategies.moe_adapters): the CIL recipe equals MoZO without ZO, the router bank, activate-freeze,
DDAS routing and its frozen-CLIP fallback, options reaching the evaluation, resume, costs and the offline refusal."""

from __future__ import annotations

import dataclasses
import inspect
import io
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import StreamContext
from benchmarks.synthetic import SyntheticStreamConfig, build_synthetic
from runs import checkpoint
from runs.__main__ import main
from runs.config import load_suite
from strategies.clip.units import MoEAdapter, UnitsConfig
from strategies.cost import extra_state_of, tensor_bytes
from strategies.moe_adapters import DDASConfig, MoEAdapters, MoEAdaptersConfig
from strategies.moe_adapters import plugin as plugin_mod
from strategies.moe_adapters.ddas import FROZEN, choose_routes
from strategies.moe_adapters.freeze import grow_frozen
from strategies.mozo import MoZO
from strategies.options import defaults
from strategies.registry import METHODS
from strategies.training import ActiveClassCrossEntropy, LabelSpacePlugin, RecipePlugin, TrainConfig

DDAS = {"enabled": True, "pretrained": "none", "domain0": "none", "image_size": 64, "iterations": 6,
        "batch_size": 4, "threshold": 10.0}
MTIL = {"routers": "per_task", "freeze_top": 2}


def _bench(experiences: int = 2, classes: int = 4, train_per_class: int = 6):
    cfg = SyntheticStreamConfig(n_classes=classes, n_experiences=experiences, train_per_class=train_per_class,
                                test_per_class=2, seed=0)
    return build_synthetic(cfg, StreamContext(".", None, None, 32))


def _model(factory, bench, experts: int = 2, top_k: int = 2, seed: int = 0):
    model = factory(kind="moe", seed=seed, experts=experts, top_k=top_k)
    model.set_class_prompts(bench.class_prompts)
    return model


def _moe(model, bench, *, recipe: bool = False, **options):
    """The strategy as the runner builds it (``recipe``: with RecipePlugin's fresh optimizer state per task)."""
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    plugins = [LabelSpacePlugin(bench), *([RecipePlugin(TrainConfig(lr=1e-2, warmup=0))] if recipe else [])]
    return MoEAdapters(model, optimizer, ActiveClassCrossEntropy(), tasks=bench.n_experiences, train_mb_size=4,
                       eval_mb_size=8, device="cpu", evaluator=None, eval_every=-1, plugins=plugins, **options)


def _units(model):
    return {key: unit for key, unit in model.units.items()}


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ---- item 1: the class-incremental recipe is MoZO without ZO ------------------------------------------
def test_cil_recipe_gives_the_weights_of_mozo_with_branch_none(tiny_model_factory):
    bench = _bench()
    weights = []
    for make in ("moe", "mozo"):
        model = _model(tiny_model_factory, bench)
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
        common = dict(train_mb_size=4, device="cpu", evaluator=None, eval_every=-1, plugins=[LabelSpacePlugin(bench)])
        if make == "moe":
            strategy = MoEAdapters(model, optimizer, ActiveClassCrossEntropy(), **common)
        else:
            strategy = MoZO(model, optimizer, ActiveClassCrossEntropy(), branch="none", **common)
        torch.manual_seed(7)
        for experience in bench.scenario.train_stream:
            strategy.train(experience, eval_streams=[])
        weights.append(_snapshot(model))
    assert weights[0].keys() == weights[1].keys()
    initial, changed = _snapshot(_model(tiny_model_factory, bench)), 0
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
        changed += int(not torch.equal(tensor, initial[name]))
    assert changed > 0  # the steps did train something


# ---- item 2: router bank -----------------------------------------------------------------------------
def test_each_task_trains_with_its_own_router(tiny_model_factory, monkeypatch):
    bench = _bench(experiences=3, classes=6)
    model = _model(tiny_model_factory, bench, experts=4, top_k=2)
    strategy = _moe(model, bench, **MTIL)
    unit = model.units[("vision", 0)]
    assert unit.n_routers == 3
    seen: list[int | None] = []
    original = MoEAdapter.gates

    def spy(self, x):
        seen.append(self.route)
        return original(self, x)

    monkeypatch.setattr(MoEAdapter, "gates", spy)
    routers = []
    for task, experience in enumerate(bench.scenario.train_stream):
        seen.clear()
        strategy.train(experience, eval_streams=[])
        assert set(seen) == {task}  # every unit of every forward used the task's router
        routers.append([torch.cat([g.detach().clone() for g in unit.router(r)]) for r in range(3)])
    zero = torch.zeros_like(routers[0][0])
    assert not torch.equal(routers[0][0], zero) and torch.equal(routers[0][1], zero)  # task 0 -> router 0 only
    assert torch.equal(routers[1][0], routers[0][0]) and not torch.equal(routers[1][1], zero)  # router 0 kept
    assert torch.equal(routers[2][1], routers[1][1]) and not torch.equal(routers[2][2], zero)


# ---- activate-freeze -----------------------------------------------------------------------------------
def test_frozen_experts_are_the_top2_by_counts_and_stay_bit_identical(tiny_model_factory):
    bench = _bench(experiences=3, classes=6)
    model = _model(tiny_model_factory, bench, experts=4, top_k=2)
    strategy = _moe(model, bench, **MTIL)
    plugin = strategy.moe
    stream = bench.scenario.train_stream
    strategy.train(stream[0], eval_streams=[])
    for key in model.units:
        name = f"{key[0]}.{key[1]}"
        counts = plugin.last_counts[name]
        assert int(counts.sum()) > 0
        assert plugin.frozen[name].sum() == 2
        assert set(plugin.frozen[name].nonzero().flatten().tolist()) == set(counts.topk(2).indices.tolist())
    frozen_before = {name: mask.clone() for name, mask in plugin.frozen.items()}
    kept = {(key, e): _snapshot(unit.experts[e]) for key, unit in model.units.items()
            for e in plugin.frozen[f"{key[0]}.{key[1]}"].nonzero().flatten().tolist()}
    trainable = {(key, e): _snapshot(unit.experts[e]) for key, unit in model.units.items()
                 for e in (~plugin.frozen[f"{key[0]}.{key[1]}"]).nonzero().flatten().tolist()}
    strategy.train(stream[1], eval_streams=[])
    for (key, e), params in kept.items():
        for name, tensor in params.items():
            assert torch.equal(model.units[key].experts[e].get_parameter(name), tensor), (key, e, name)
    moved = sum(not torch.equal(model.units[key].experts[e].get_parameter(n), t)
                for (key, e), params in trainable.items() for n, t in params.items())
    assert moved > 0
    for name, mask in plugin.frozen.items():  # a union: what was frozen stays frozen, top-2 of task 1 added
        assert bool((mask | frozen_before[name]).eq(mask).all())
        expected = grow_frozen(frozen_before[name], plugin.last_counts[name], 2)
        assert torch.equal(mask, expected)


def test_repeated_top2_does_not_grow_the_frozen_set():
    frozen = torch.tensor([True, True, False, False])
    assert torch.equal(grow_frozen(frozen, torch.tensor([9, 8, 1, 0]), 2), frozen)
    assert grow_frozen(frozen, torch.tensor([9, 1, 8, 0]), 2).tolist() == [True, True, True, False]


def test_counts_are_what_the_gates_chose():
    torch.manual_seed(0)
    unit = MoEAdapter(8, UnitsConfig(kind="moe", experts=5, top_k=2)).train()
    with torch.no_grad():
        unit.w_gate.normal_()
    unit.counts = torch.zeros(5, dtype=torch.int64)
    chosen = torch.zeros(5, dtype=torch.int64)
    for _ in range(3):
        gates = unit.gates(torch.randn(7, 3, 8))
        chosen += (gates != 0).sum(0)
    assert torch.equal(unit.counts, chosen) and int(unit.counts.sum()) == 3 * 7 * 2
    unit.eval()
    unit.gates(torch.randn(7, 3, 8))
    assert torch.equal(unit.counts, chosen)  # evaluation forwards are not counted


def test_sparse_dispatch_equals_dense_and_skips_unchosen_experts():
    torch.manual_seed(0)
    unit = MoEAdapter(8, UnitsConfig(kind="moe", experts=6, top_k=2, dropout=0.0))
    with torch.no_grad():
        unit.w_gate.normal_()
        for expert in unit.experts:
            expert.up.weight.normal_()
    x = torch.randn(3, 4, 8)
    unit.eval()
    dense = unit(x)
    unit.sparse = True
    out = unit(x)
    torch.testing.assert_close(out, dense)
    out.sum().backward()
    chosen = (unit.gates(x) != 0).any(0)
    for e, expert in enumerate(unit.experts):
        assert (expert.up.weight.grad is not None) == bool(chosen[e])


def test_route_none_switches_the_unit_off():
    unit = MoEAdapter(8, UnitsConfig(kind="moe"))
    with torch.no_grad():
        unit.experts[0].up.weight.fill_(1.0)
    x = torch.randn(2, 3, 8)
    assert unit(x).abs().sum() > 0
    unit.route = None
    assert torch.equal(unit(x), torch.zeros_like(x))


# ---- DDAS --------------------------------------------------------------------------------------------
def _domain(value: float, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Toy images: ``value`` = 0 flat grey (small noise), else noise of scale ``value`` (two separated domains)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g) * (value or 0.01)


def _loader(images):
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.int64))
    return torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)


def _ddas_plugin(**ddas):
    cfg = MoEAdaptersConfig(routers="per_task", ddas=DDASConfig(**(DDAS | ddas)))
    return plugin_mod.MoEAdaptersPlugin(cfg)


def test_autoencoder_losses_decrease():
    plugin = _ddas_plugin()
    plugin.autoencoders.append(plugin.fit_autoencoder(_loader(_domain(5.0)), 30, torch.device("cpu")))
    losses = plugin.ae_losses["0"]
    assert len(losses) == 30 and losses[-5:].mean() < losses[:5].mean()


def _two_domain_plugin(**ddas):
    plugin = _ddas_plugin(**ddas)
    for value in (0.0, 5.0):  # domain A (flat), domain B (noise)
        plugin.autoencoders.append(plugin.fit_autoencoder(_loader(_domain(value)), 40, torch.device("cpu")))
    return plugin


def test_per_sample_routing_picks_each_images_autoencoder_and_batch_routing_one_per_batch():
    plugin = _two_domain_plugin()
    a, b = _domain(0.0, 3, seed=5), _domain(5.0, 3, seed=6)
    mixed = torch.cat([a, b])
    assert plugin.routes(mixed).tolist() == [0, 0, 0, 1, 1, 1]
    plugin.cfg.ddas.routing = "batch"
    routes = plugin.routes(mixed)
    assert routes.unique().numel() == 1 and routes.numel() == 6
    assert plugin.routes(b).tolist() == [1, 1, 1]


def test_choose_routes_threshold_and_domain0():
    errors = torch.tensor([[0.01, 0.02, 0.03], [0.05, 0.01, 0.30], [0.50, 0.40, 0.90]])
    assert choose_routes(errors, 0.1, "sample", domain0=True).tolist() == [FROZEN, 0, FROZEN]
    assert choose_routes(errors, 0.1, "sample", domain0=False).tolist() == [0, 1, FROZEN]
    assert choose_routes(errors, 1.0, "batch", domain0=True).tolist() == [0, 0, 0]  # means 0.187, 0.143, 0.41


def _trained_units(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for unit in model.units.values():
            for expert in unit.experts:
                expert.up.weight.normal_(std=0.5)
            for r in range(unit.n_routers):
                unit.router(r)[0].normal_()


@pytest.mark.parametrize("case", ["threshold", "domain0"])
def test_frozen_clip_answers_domain0_and_above_threshold(tiny_model_factory, case):
    bench = _bench()
    frozen_clip = tiny_model_factory(kind="none", seed=0)
    frozen_clip.set_class_prompts(bench.class_prompts)
    model = _model(tiny_model_factory, bench)
    plugin = _two_domain_plugin(domain0="tinyimagenet", threshold=1e-12 if case == "threshold" else 10.0)
    plugin.prepare(model, 2)
    _trained_units(model)
    images = _domain(0.0, 4, seed=9)  # domain A = autoencoder 0 = domain 0 when domain0 is on
    model.eval()
    frozen_clip.eval()
    with torch.no_grad():
        assert plugin.routes(images).tolist() == [FROZEN] * 4
        logits = plugin.deliver(model, images)
        assert torch.equal(logits, frozen_clip(images))
        assert not torch.equal(model(images), frozen_clip(images))  # the units do change the output
        noise = _domain(5.0, 4, seed=9)
        if case == "domain0":  # domain B = task 0: the MoE with router 0, image and text towers
            assert plugin.routes(noise).tolist() == [0] * 4
            for unit in model.units.values():
                unit.route = 0
            model.invalidate_text_cache()
            assert torch.equal(plugin.deliver(model, noise), model(noise))


def _suite(tmp_path: Path, method: dict, units: dict | None = None, **extra) -> Path:
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "moetest", "output_dir": str(tmp_path / "out"), "wandb": {"mode": "offline"},
        "defaults": {"model": {"arch": "clip-tiny", "pretrained": "none",
                               "units": units or {"kind": "moe", "experts": 4, "top_k": 2}},
                     "stream": {"name": "synthetic", "n_classes": 4, "n_experiences": 2, "train_per_class": 4,
                                "test_per_class": 2},
                     "train": {"batch_size": 4, "eval_batch_size": 8}, "seeds": [0], **extra},
        "runs": [{"name": "moe", "method": {"name": "moe-adapters", **method}}]}))
    return path


@pytest.mark.parametrize("routing", ["sample", "batch"])
def test_routing_reaches_the_evaluation(tmp_path, tiny_model_factory, monkeypatch, routing):
    run = load_suite(_suite(tmp_path, {**MTIL, "ddas": {**DDAS, "routing": routing}})).runs[0]
    assert run.method.cfg.ddas.routing == routing
    calls = []
    original = plugin_mod.choose_routes

    def spy(errors, threshold, how, domain0):
        calls.append((how, threshold))
        return original(errors, threshold, how, domain0)

    monkeypatch.setattr(plugin_mod, "choose_routes", spy)
    bench = _bench()
    model = _model(tiny_model_factory, bench, experts=4)
    strategy = METHODS["moe-adapters"].build(model, run.method.cfg, train=TrainConfig(batch_size=4), plugins=[
        LabelSpacePlugin(bench)], evaluator=None, device="cpu", criterion=ActiveClassCrossEntropy(),
        benchmark=bench, seed=0)
    assert model.units[("vision", 0)].n_routers == 2
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    strategy.eval([bench.scenario.test_stream[0]])
    assert calls and {c for c in calls} == {(routing, DDAS["threshold"])}


# ---- resume ----------------------------------------------------------------------------------------
def test_resume_after_an_experience_gives_identical_numbers(tiny_model_factory):
    bench = _bench(experiences=3, classes=6)
    options = {**MTIL, "ddas": DDAS, "recipe": True}
    stream, test = bench.scenario.train_stream, bench.scenario.test_stream
    torch.manual_seed(11)
    straight = _moe(_model(tiny_model_factory, bench, experts=4), bench, **options)
    straight.train(stream[0], eval_streams=[])
    buffer = io.BytesIO()
    torch.save({"model": checkpoint.model_state(straight.model),
                "plugins": checkpoint.plugin_states(straight.plugins, checkpoint.Context(straight, stream)),
                "rng": checkpoint.rng_state()}, buffer)
    straight.train(stream[1], eval_streams=[])

    resumed = _moe(_model(tiny_model_factory, bench, experts=4), bench, **options)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed.model.load_state_dict(state["model"], strict=False)
    checkpoint.load_plugin_states(resumed.plugins, state["plugins"], checkpoint.Context(resumed, stream))
    checkpoint.set_rng_state(state["rng"])
    resumed.train(stream[1], eval_streams=[])

    a, b = straight.moe, resumed.moe
    assert a.frozen.keys() == b.frozen.keys() and all(torch.equal(a.frozen[k], b.frozen[k]) for k in a.frozen)
    assert len(a.autoencoders) == len(b.autoencoders) == 2
    for x, y in zip(a.autoencoders.state_dict().values(), b.autoencoders.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    for name, tensor in _snapshot(straight.model).items():
        assert torch.equal(tensor, _snapshot(resumed.model)[name]), name
    images = torch.stack([test[1].dataset[i][0] for i in range(4)])
    for s in (straight, resumed):
        s.model.eval()
        s.model.set_active_classes(bench.experience_classes[1])
        s.moe.before_eval(s)
    with torch.no_grad():
        assert torch.equal(a.deliver(straight.model, images), b.deliver(resumed.model, images))


# ---- costs, options, refusal ----------------------------------------------------------------------------
def test_extra_state_reports_router_bank_frozen_set_and_autoencoders(tiny_model_factory):
    bench = _bench()
    model = _model(tiny_model_factory, bench, experts=4)
    strategy = _moe(model, bench, **MTIL, ddas=DDAS)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    report = extra_state_of(strategy.plugins)
    units = list(model.units.values())
    bank = sum(2 * u.w_gate.numel() * 4 for u in units)  # router 1 of each unit (gate + noise), float32
    assert report["router_bank"] == bank
    assert report["frozen_set"] == len(units) * 4 * (1 + 8)  # bool mask + int64 counts per expert
    ae = strategy.moe.autoencoders[0]
    dims = ae.encoder[0].in_features
    assert report["autoencoders"] == 4 * (2 * dims * 100 + 100 + dims)
    assert report["ddas_feature_extractor"] == tensor_bytes(strategy.moe.extractor) > 0
    cil = _moe(_model(tiny_model_factory, bench), bench)
    assert extra_state_of(cil.plugins) == {}


def test_constructor_names_every_option_with_the_config_defaults(tiny_model_factory):
    params = inspect.signature(MoEAdapters.__init__).parameters
    for name, default in defaults(MoEAdaptersConfig).items():
        assert params[name].default == default, name
    cfg = MoEAdaptersConfig()
    assert (cfg.routers, cfg.freeze_top, cfg.ddas.enabled, cfg.ddas.routing, cfg.ddas.threshold) == (
        "shared", 0, False, "sample", 0.0655)
    assert all(f.metadata.get("help") for cls in (MoEAdaptersConfig, DDASConfig) for f in dataclasses.fields(cls))
    with pytest.raises(ValueError, match="method.ddas.enabled"):
        MoEAdaptersConfig(ddas=DDASConfig(enabled=True))


def test_units_must_be_moe(tmp_path, capsys):
    suite = _suite(tmp_path, {}, units={"kind": "adapter"})
    assert main(["run", str(suite)]) == 2
    assert "model.units.kind" in capsys.readouterr().err


def test_missing_alexnet_weights_offline_refuses_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    suite = _suite(tmp_path, {**MTIL, "ddas": {**DDAS, "pretrained": "imagenet"}})
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert err.count("AlexNet weights are not cached") == 1 and "method.ddas.pretrained: none" in err
    assert not (tmp_path / "out").exists()  # nothing written


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "tiny-imagenet-200").is_dir(), reason=f"{SHARED}/tiny-imagenet-200 not present")
def test_domain0_reads_tinyimagenet_through_the_models_transform(tiny_model_factory):
    model = tiny_model_factory(kind="moe")
    dataset = plugin_mod.domain0_dataset(model, str(SHARED), False, per_class=1)
    image, _ = dataset[0]
    assert len(dataset) == 200 and image.shape == (3, 32, 32)
