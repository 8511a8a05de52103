"""MoZO plugin and strategy on the tiny CLIP (issue: MoZO, parts 3-5)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from runs.config import load_suite
from runs.runner import RunSession, run_suite
from strategies.mozo import MoZO, MoZOConfig, MoZOPlugin
from strategies.mozo.config import CONFIG_FIELDS
from strategies.mozo.zo import directions

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.arch=clip-tiny", "model.pretrained=none", "model.units.bottleneck=16", "model.units.dropout=0.0",
    "stream={name: synthetic, n_classes: 4, n_experiences: 2, train_per_class: 32, test_per_class: 8}",
    "train.batch_size=16", "train.warmup=2", "train.lr=0.01", "data_root=.",
]


class _Batch:
    """The strategy attributes the plugin reads in ``before_update``."""

    def __init__(self, model, x, y, lr):
        self.model, self.mb_x, self.mb_y = model, x, y
        self._criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        self.clock = type("Clock", (), {"train_iterations": 1})()
        self.evaluator = type("Evaluator", (), {"publish_metric_value": lambda self, v: None})()
        self.loss = torch.tensor(0.0)


def _attached(model, **options):
    plugin = MoZOPlugin(MoZOConfig(**options))
    plugin.attach(model)
    return plugin


def _unit_grads(model, keys):
    return {k: [p.grad for p in model.units[k].parameters()] for k in keys}


@pytest.mark.parametrize("kind", ["moe", "lora"])  # MoZO's units, and the paper's LoRA consistency study
def test_mozo_step_fo_units_get_gradients_zo_units_none(tiny_model_factory, kind):
    model = tiny_model_factory(kind, dropout=0.0, lora_rank=4).train()
    if kind == "lora":  # LoRA's B starts at zero: give it a value so every unit has gradients
        with torch.no_grad():
            for unit in model.units.values():
                for lora in unit.values():
                    lora.B.normal_(std=0.1)
    plugin = _attached(model, branch="dual", layers="hop-even")
    # 1-based hop-even on 2-layer towers: layer 2 (index 1) of each tower is ZO
    assert plugin.zo_keys == {("vision", 1), ("language", 1)}
    assert plugin.fo_keys == {("vision", 0), ("language", 0)}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for key, grads in _unit_grads(model, plugin.fo_keys).items():
        assert all(g is not None for g in grads), key
    for key, grads in _unit_grads(model, plugin.zo_keys).items():
        assert all(g is None for g in grads), key
    # the ZO step moves only ZO units (or keeps θ when no candidate is better)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(5):
        plugin.before_update(_Batch(model, x, y, lr=0.01))
    zo_ids = {id(p) for k in plugin.zo_keys for p in model.units[k].parameters()}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "five ZO steps never accepted a move"
    assert all(id(dict(model.named_parameters())[n]) in zo_ids for n in changed)


def test_dual_zo_step_builds_no_autograd_graph(tiny_model_factory):
    model = tiny_model_factory("moe").train()
    _attached(model, branch="dual", layers="all")
    assert not any(p.requires_grad for p in model.parameters())
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.grad_fn is None and not logits.requires_grad


def test_language_zo_reuses_image_features_across_probes(tiny_model_factory, monkeypatch):
    model = tiny_model_factory("moe", dropout=0.0).train()
    plugin = _attached(model, branch="language", layers="all", queries=2)
    calls = {"image": 0}
    original = model.encode_image

    def counting(images):
        calls["image"] += 1
        return original(images)

    monkeypatch.setattr(model, "encode_image", counting)
    plugin.before_update(_Batch(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), lr=0.01))
    assert calls["image"] == 1  # 2 queries × 2 probes + θ + 2 candidates, one image forward


def test_conservative_mozo_step_never_increases_minibatch_loss(tiny_model_factory):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    plugin = _attached(model, branch="dual", layers="all")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    batch = _Batch(model, x, y, lr=0.05)
    for _ in range(6):
        loss_before = float(plugin.loss_closure(batch)())
        plugin.before_update(batch)
        assert float(plugin.loss_closure(batch)()) <= loss_before + 1e-6


def _tiny_suite(tmp_path, extra=(), only=None):
    """mozo_paper.yaml on the tiny model; ``only``: keep these runs (prefix-6 / suffix-6 need 12 blocks)."""
    path = ROOT / "runs" / "suites" / "mozo_paper.yaml"
    if only is not None:
        data = yaml.safe_load(path.read_text())
        data["runs"] = [r for r in data["runs"] if r["name"] in only]
        path = tmp_path / "mozo_paper.yaml"
        path.write_text(yaml.safe_dump(data))
    suite = load_suite(path, overrides=[*TINY, *extra])
    suite.output_dir = str(tmp_path)
    return suite


def test_mozo_lowers_training_loss_on_synthetic_stream(tmp_path):
    suite = _tiny_suite(tmp_path, ["train.epochs=6", "train.lr=0.05"], only=["mozo"])
    run = next(r for r in suite.runs if r.name == "mozo")
    session = RunSession(suite, run, 0)
    session.build()
    model, x_y = session.model, session.benchmark.scenario.train_stream[0].dataset
    x = torch.stack([x_y[i][0] for i in range(len(x_y))]).to(model.device)  # train.device auto: maybe CUDA
    y = torch.tensor([x_y[i][1] for i in range(len(x_y))], device=model.device)
    model.set_active_classes(session.benchmark.experience_classes[0])

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x), y))

    before = eval_loss()
    session.strategy.train(session.benchmark.scenario.train_stream[0], eval_streams=[])
    model.set_active_classes(session.benchmark.experience_classes[0])
    after = eval_loss()
    session.wandb.finish()
    assert after < 0.7 * before, (before, after)


@pytest.mark.slow
def test_tiny_mozo_paper_suite_runs_every_configuration(tmp_path):
    # 12 blocks per tower, like ViT-B/16, so prefix-6 / suffix-6 / hop-* select as in the paper
    suite = _tiny_suite(tmp_path, ["train.epochs=1", "model.arch=clip-tiny-12l"])
    outcome = run_suite(suite)
    names = sorted(r["name"] for r in outcome.records)
    assert outcome.failed == [] and names == sorted(r.name for r in suite.runs)
    assert len(names) == 11 and "moe-adapters" in names  # the paper's 10 configurations and MoE-Adapters' row
    for record in outcome.records:
        assert np.isfinite(record["metrics"]["avg"]), record["name"]


def test_tiny_mozo_suite_subset_runs_end_to_end(tmp_path):
    suite = _tiny_suite(tmp_path, only=["fo-baseline", "dual-zo", "mozo"])
    outcome = run_suite(suite)
    assert outcome.failed == [] and sorted(r["name"] for r in outcome.records) == ["dual-zo", "fo-baseline", "mozo"]
    table = (tmp_path / "mozo_paper" / "results.md").read_text()
    assert "| mozo |" in table and "| dual-zo |" in table


# --------------------------------------------------------------------------- config reaches the ZO step


def _random_units(model, std: float = 0.2):
    """Non-zero up-projections and routers, so units (and their dropout / router noise) matter."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for unit in model.units.values():
            for p in unit.parameters():
                if p.ndim == 2 and not p.abs().sum():
                    p.copy_(torch.randn(p.shape, generator=g) * std)
    model.invalidate_text_cache()


class _Counting(torch.nn.CrossEntropyLoss):
    calls = 0

    def forward(self, logits, y):
        type(self).calls += 1
        return super().forward(logits, y)


def _step(model, options, *, base_lr=0.01, current_lr=None):
    """One plugin step on a fixed minibatch; returns (plugin, batch, θ before, number of loss calls)."""
    plugin = _attached(model, **options)
    batch = _Batch(model, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)),
                   torch.tensor([0, 1, 2, 0]), lr=base_lr)
    batch._criterion = _Counting()
    plugin.before_training(batch)  # reads the base lr from the optimizer
    if current_lr is not None:
        batch.optimizer.param_groups[0]["lr"] = current_lr  # e.g. the warm-up/cosine schedule moved it
    before = [[p.detach().clone() for p in g.params] for g in plugin.groups]
    _Counting.calls = 0
    plugin.before_update(batch)
    return plugin, batch, before, _Counting.calls


def _moves(plugin, before):
    return [[p - b for p, b in zip(g.params, bs, strict=True)] for g, bs in zip(plugin.groups, before, strict=True)]


def test_defaults_are_the_papers_reading():
    cfg = MoZOConfig()
    assert (cfg.branch, cfg.layers, cfg.vision_perturbation, cfg.sign, cfg.candidate) == (
        "dual", "hop-even", "per_tower", "scalar", "conservative")  # docs/methods/mozo.md#vision-perturbation
    assert cfg.eps_vision < cfg.eps_language and cfg.penalties and cfg.mix == 1.0 and cfg.zo_lr is None


@pytest.mark.parametrize(
    ("zo_lr", "mix", "current", "step"),
    [(None, 1.0, None, 0.01), (None, 1.0, 0.0025, 0.0025), (None, 0.5, None, 0.005),
     (0.2, 1.0, 0.005, 0.1), (0.2, 0.5, None, 0.1)],
)
def test_zo_step_size_follows_the_optimizer_lr_mix_and_zo_lr(tiny_model_factory, zo_lr, mix, current, step):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    plugin, _, before, _ = _step(model, dict(branch="dual", layers="all", candidate="aggressive", zo_lr=zo_lr,
                                             mix=mix), current_lr=current)
    assert plugin.base_lr == 0.01
    s = math.copysign(1.0, plugin.last.projected[0])
    zs = directions(plugin.groups, plugin.last.seeds[0])
    moves = [m for ms in _moves(plugin, before) for m in ms]
    for z, move in zip(zs, moves, strict=True):
        assert torch.allclose(move, -step * s * z, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sign", ["scalar", "elementwise", "none"])
@pytest.mark.parametrize("perturbation", ["joint", "scaled"])
def test_sign_mode_eps_and_vision_scaling_reach_the_update(tiny_model_factory, sign, perturbation):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    eps = {"vision": 2e-4, "language": 3e-3}
    plugin, _, before, _ = _step(model, dict(branch="dual", layers="all", candidate="aggressive", sign=sign,
                                             eps_vision=eps["vision"], eps_language=eps["language"],
                                             vision_perturbation=perturbation))
    assert {g.name: g.eps for g in plugin.groups} == eps
    p = plugin.last.projected[0]
    zs = iter(directions(plugin.groups, plugin.last.seeds[0]))
    for group, moves in zip(plugin.groups, _moves(plugin, before), strict=True):
        scale = eps["vision"] / eps["language"] if (perturbation == "scaled" and group.name == "vision") else 1.0
        for move in moves:
            z = next(zs)
            d = {"scalar": math.copysign(1.0, p) * z, "elementwise": torch.sign(p * z),
                 "none": (p / eps[group.name]) * z}[sign]
            assert torch.allclose(move, -0.01 * scale * d, rtol=1e-4, atol=1e-7), (group.name, sign)


def test_per_tower_moves_each_tower_by_the_sign_of_its_own_probe(tiny_model_factory):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    _random_units(model)
    plugin = _attached(model, branch="dual", layers="all", candidate="aggressive", vision_perturbation="per_tower")
    batch = _Batch(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), lr=0.01)
    seen_differ = False
    for _ in range(8):
        before = [[p.detach().clone() for p in g.params] for g in plugin.groups]
        plugin.before_update(batch)
        (pv,), (pl,) = plugin.last.per_group
        assert plugin.last.projected[0] == pytest.approx(pv + pl)
        zs = iter(directions(plugin.groups, plugin.last.seeds[0]))
        for moves, pg in zip(_moves(plugin, before), (pv, pl), strict=True):
            for move in moves:
                assert torch.allclose(move, -0.01 * math.copysign(1.0, pg) * next(zs), rtol=1e-4, atol=1e-7)
        seen_differ |= (pv > 0) != (pl > 0)
    assert seen_differ  # so a joint sign would have moved one tower the other way


@pytest.mark.parametrize(
    ("options", "calls", "queries"),
    [({"vision_perturbation": "joint"}, 5, 1), ({"vision_perturbation": "joint", "queries": 3}, 9, 3),
     ({"vision_perturbation": "joint", "two_sided": False}, 4, 1),
     ({"vision_perturbation": "joint", "candidate": "aggressive"}, 2, 1),
     ({}, 7, 1),  # the default reading is per_tower
     ({"vision_perturbation": "per_tower"}, 7, 1), ({"vision_perturbation": "per_tower", "queries": 2}, 11, 2)],
)
def test_queries_sidedness_candidates_and_probes_set_the_loss_evaluations(tiny_model_factory, options, calls,
                                                                          queries):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    plugin, _, _, n = _step(model, dict(branch="dual", layers="all", **options))
    assert n == calls and len(plugin.last.seeds) == queries
    assert (plugin.last.candidate == "aggressive") == (options.get("candidate") == "aggressive")


def test_every_step_draws_fresh_direction_and_model_seeds(tiny_model_factory, monkeypatch):
    import strategies.mozo.plugin as plugin_module

    model = tiny_model_factory("moe", dropout=0.0).eval()
    plugin = _attached(model, branch="dual", layers="all")
    seen = []
    real = plugin_module.zo_step

    def spy(groups, loss_fn, seed, **kw):
        seen.append((seed, kw["rng_seed_for_model"]))
        return real(groups, loss_fn, seed, **kw)

    monkeypatch.setattr(plugin_module, "zo_step", spy)
    batch = _Batch(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), lr=0.01)
    for _ in range(4):
        plugin.before_update(batch)
    directions_seeds, model_seeds = zip(*seen, strict=True)
    assert len(set(directions_seeds)) == 4 and len(set(model_seeds)) == 4
    assert not set(directions_seeds) & set(model_seeds)


# --------------------------------------------------------------------------- shared randomness, real model


def test_dropout_and_router_noise_are_shared_within_a_step(tiny_model_factory, monkeypatch):
    import strategies.mozo.plugin as plugin_module

    model = tiny_model_factory("moe", dropout=0.3).train()
    _random_units(model)
    plugin = _attached(model, branch="dual", layers="hop-even", vision_perturbation="per_tower")
    batch = _Batch(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), lr=0.05)
    full, (vision, language) = plugin.closures(batch, 7)
    value = float(full())
    assert float(full()) == value == float(vision()) == float(language())  # language reuses image features
    assert float(plugin.closures(batch, 8)[0]()) != value  # the randomness is real
    seeds = []
    real = plugin_module.zo_step
    monkeypatch.setattr(plugin_module, "zo_step",
                        lambda *a, **kw: seeds.append(kw["rng_seed_for_model"]) or real(*a, **kw))
    for _ in range(6):
        plugin.before_update(batch)
        res = plugin.last
        after = float(plugin.closures(batch, seeds[-1])[0]())
        assert res.loss_after <= res.loss and after == pytest.approx(res.loss_after, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- other plugins' penalties


def test_zo_losses_include_lwf_penalty_unless_disabled(tiny_model_factory):
    import copy

    from avalanche.training.plugins import LwFPlugin

    model = tiny_model_factory("moe", dropout=0.0).eval()
    lwf = LwFPlugin(alpha=2.0, temperature=2.0)
    lwf.lwf.prev_model = copy.deepcopy(model)
    _random_units(model, std=5.0)  # the current model differs from the previous one
    lwf.lwf.prev_classes_by_task[0] = {0, 1}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out, prev = model(x), lwf.lwf.prev_model(x)
    ce = torch.nn.functional.cross_entropy(out, y)
    kd = torch.nn.functional.kl_div(torch.log_softmax(out[:, [0, 1]] / 2, 1), torch.softmax(prev[:, [0, 1]] / 2, 1),
                                    reduction="batchmean")
    for penalties, expected in ((True, ce + 2.0 * kd), (False, ce)):
        plugin = _attached(model, branch="dual", layers="all", penalties=penalties)
        batch = _Batch(model, x, y, lr=0.01)
        batch.plugins = [lwf, plugin]
        batch.mb_output = "fo output"
        plugin.before_training(batch)
        assert float(plugin.closures(batch, 0)[0]()) == pytest.approx(float(expected), rel=1e-5)
        assert batch.mb_output == "fo output" and float(batch.loss) == 0.0  # the FO state is put back
    assert float(kd) > 1e-3  # the two expectations differ


def test_unreplayed_before_backward_plugins_are_reported(tiny_model_factory):
    import logging

    from avalanche.core import SupervisedPlugin

    class AddsLoss(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            strategy.loss += 1.0

    model = tiny_model_factory("moe", dropout=0.0)
    plugin = _attached(model, branch="dual", layers="all")
    batch = _Batch(model, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), lr=0.01)
    batch.plugins = [AddsLoss(), plugin]
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("strategies.mozo.plugin")
    log.addHandler(handler)
    try:
        plugin.before_training(batch)
    finally:
        log.removeHandler(handler)
    assert records == ["MoZO: AddsLoss changes the loss in before_backward; ZO probes do not include it"]
    assert plugin.penalty_plugins == []


# --------------------------------------------------------------------------- plain Avalanche use


class _Tensors(torch.utils.data.Dataset):
    """A plain (x, y) dataset with ``targets``, as Avalanche's generators take."""

    def __init__(self, x, y):
        self.x, self.targets = x, y.tolist()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def _avalanche_stream():
    from avalanche.benchmarks import nc_benchmark

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 3, 32, 32, generator=g)
    y = torch.arange(3).repeat(8)
    x = centers[y] + 0.3 * torch.randn(len(y), 3, 32, 32, generator=g)
    return nc_benchmark(_Tensors(x, y), _Tensors(x[:6], y[:6]), n_experiences=1, task_labels=False, shuffle=False)


def test_naive_with_an_all_zo_plugin_trains(tiny_model_factory):
    from avalanche.training import Naive

    model = tiny_model_factory("moe", dropout=0.1)
    _random_units(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)  # built before the plugin: that is fine
    strategy = Naive(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8,
                     train_epochs=2, device="cpu", plugins=[MoZOPlugin(branch="dual", layers="all")])
    strategy.train(_avalanche_stream().train_stream[0])
    assert not any(p.requires_grad for p in model.parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".unit." in n for n in changed), sorted(changed)[:5]


def test_mozo_is_built_by_keyword_like_avalanche_strategies(tiny_model_factory):
    model = tiny_model_factory("moe", dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    plain = MoZO(model, optimizer, torch.nn.CrossEntropyLoss())
    assert plain.mozo.cfg == MoZOConfig() and plain.mozo in plain.plugins
    strategy = MoZO(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), branch="vision",
                    layers="hop-odd", eps_vision=1e-4, vision_perturbation="scaled", train_mb_size=8,
                    train_epochs=1, device="cpu")
    cfg = strategy.mozo.cfg
    assert (cfg.branch, cfg.layers, cfg.eps_vision, cfg.vision_perturbation) == ("vision", "hop-odd", 1e-4, "scaled")
    assert strategy.train_mb_size == 8
    strategy.train(_avalanche_stream().train_stream[0])
    assert strategy.mozo.zo_keys == {("vision", 0)} and strategy.mozo.base_lr == 0.01
    every_field = dict(branch="language", layers=[1], one_based=False, eps_language=2e-3, eps_vision=1e-4,
                       vision_perturbation="joint", zo_lr=0.5, queries=2, two_sided=False, sign="none",
                       candidate="aggressive", mix=0.5, zo_weight_decay=0.1, penalties=False, log_every=3,
                       probe_precision="train", cache_directions=False)
    assert set(every_field) == set(CONFIG_FIELDS)  # each keyword a MoZOConfig field, with a non-default value
    assert all(every_field[f] != getattr(MoZOConfig(), f) for f in every_field)
    assert MoZO(model, optimizer, **every_field).mozo.cfg == MoZOConfig(**every_field)  # all reach the plugin
    with pytest.raises(TypeError, match="unexpected keyword argument: eps"):
        MoZO(model, optimizer, eps=1e-3)  # neither a MoZO option nor a SupervisedTemplate one
    with pytest.raises(ValueError, match="MoZO branch='both': expected one of dual, vision, language, none"):
        MoZO(model, optimizer, branch="both")
    with pytest.raises(ValueError, match="MoZO eps_vision=0: expected a number > 0"):
        MoZOPlugin(eps_vision=0)
    with pytest.raises(TypeError, match="MoZO: unknown options \\['eps'\\]"):
        MoZOPlugin(eps=1e-3)


def _count_forwards(model, monkeypatch):
    """Image-tower and text-tower forwards of ``model`` from now on (the text cache serves without one)."""
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


@pytest.mark.parametrize("perturbation", ["joint", "per_tower"])
def test_per_tower_step_costs_the_forwards_of_a_joint_step(tiny_model_factory, monkeypatch, perturbation):
    model = tiny_model_factory("moe", dropout=0.0).eval()
    plugin = _attached(model, branch="dual", layers="all", vision_perturbation=perturbation)
    calls = _count_forwards(model, monkeypatch)
    plugin.before_update(_Batch(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), lr=0.01))
    # joint: L(θ), 2 joint probes, 2 candidates. per_tower: L(θ); vision probes reuse the text features,
    # language probes the image features of L(θ); 2 candidates
    assert calls == {"image": 5, "text": 5}


def test_alignment_study_table(tmp_path):
    from runs.studies.align import alignment_table

    table = alignment_table(arch="clip-tiny", batch_size=2, directions_per_seed=3, seeds=2, ratios=(0.5,))
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"joint", "scaled", "per_tower"} and "3 directions × 2 seeds" in table
    assert rows["scaled"][2:4] == rows["joint"][2:4] and rows["scaled"][4].startswith("0.5")  # same direction
    assert rows["per_tower"][3] == "1.000 ± 0.000"  # a lone two-sided vision probe has the gradient's sign
    with pytest.raises(ValueError, match="study align: directions, seeds and ratios"):
        alignment_table(directions_per_seed=0)
