"""MoZO plugin and strategy on the tiny CLIP (issue: MoZO, parts 3-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runs.config import load_suite
from runs.runner import RunSession, run_suite
from strategies.mozo import MoZOConfig, MoZOPlugin

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.arch=clip-tiny-12l", "model.pretrained=none", "model.units.bottleneck=16", "model.units.dropout=0.0",
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


def _tiny_suite(tmp_path, extra=()):
    suite = load_suite(ROOT / "runs" / "suites" / "mozo_paper.yaml", overrides=[*TINY, *extra])
    suite.output_dir = str(tmp_path)
    return suite


def test_mozo_lowers_training_loss_on_synthetic_stream(tmp_path):
    suite = _tiny_suite(tmp_path, ["train.epochs=6", "train.lr=0.05"])
    run = next(r for r in suite.runs if r.name == "mozo")
    session = RunSession(suite, run, 0)
    session.build()
    model, x_y = session.model, session.benchmark.scenario.train_stream[0].dataset
    x = torch.stack([x_y[i][0] for i in range(len(x_y))])
    y = torch.tensor([x_y[i][1] for i in range(len(x_y))])
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
    records = run_suite(suite)
    names = sorted(r["name"] for r in records)
    assert names == sorted(r.name for r in suite.runs) and len(names) == 9
    for record in records:
        assert np.isfinite(record["metrics"]["avg"]), record["name"]


def test_tiny_mozo_suite_subset_runs_end_to_end(tmp_path):
    suite = _tiny_suite(tmp_path)
    records = run_suite(suite, only=["fo-baseline", "dual-zo", "mozo"])
    assert sorted(r["name"] for r in records) == ["dual-zo", "fo-baseline", "mozo"]
    table = (tmp_path / "mozo_paper" / "results.md").read_text()
    assert "| mozo |" in table and "| dual-zo |" in table
