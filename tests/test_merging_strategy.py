"""Merging baselines through the runner and as Avalanche parts: λ and k reach the maths from the YAML,
the merged model is what is evaluated, resume after an experience gives identical numbers, extra_state
reports the stored bytes, the suites validate, and a tiny end-to-end run on the real subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from runs.config import load_suite
from runs.runner import RunSession, run_suite
from strategies.cost import extra_state_of, tensor_bytes
from strategies.merging import TIES, MagMax, MagMaxConfig, MergingPlugin, TaskArithmetic, TIESConfig
from strategies.merging import merges as merges_module
from strategies.merging.maths import magmax_reference, ties_reference
from strategies.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SUITE = """
name: merging_test
output_dir: {out}
wandb: {{mode: offline, project: clip-cl-tests}}
defaults:
  model: {{arch: clip-tiny, pretrained: none, units: {{kind: full}}}}
  stream: {{name: synthetic, n_classes: 6, n_experiences: 3, train_per_class: 8, test_per_class: 4}}
  train: {{iterations: 3, batch_size: 8, lr: 0.001, lr_by_experience: {{}}, warmup: 1, augment: false,
          device: cpu}}
  eval: {{zero_shot_row: false}}
  seeds: [0]
runs:
  - {{name: task-arithmetic, method: {{name: task-arithmetic, scaling: 0.42}}}}
  - {{name: ta-mean, method: task-arithmetic}}
  - {{name: ties, method: {{name: ties, k: 37, scaling: 0.123}}}}
  - {{name: magmax, method: {{name: magmax, scaling: 0.77}}}}
"""


def _suite(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(out=tmp_path / "out"))
    return load_suite(path)


class _Trained:
    """Keeps the fine-tuned weights at the end of each experience, before the merge replaces them."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.weights.append({n: p.detach().clone() for n, p in strategy.model.named_parameters() if p.requires_grad})


def _session(tmp_path, name, capture=True):
    suite = _suite(tmp_path)
    session = RunSession(suite, next(r for r in suite.runs if r.name == name), 0)
    session.build()
    trained = _Trained()
    if capture:
        session.strategy.plugins.insert(0, trained)  # before the merging plugin's after_training_exp
    return session, trained


def _train(session, steps):
    for step in range(steps):
        session.strategy.train(session.benchmark.scenario.train_stream[step], eval_streams=[])


def _params(session):
    return {n: p.detach().clone() for n, p in session.model.named_parameters() if p.requires_grad}


def test_methods_are_registered_with_condus_recipe_and_the_sourced_defaults():
    for name in ("task-arithmetic", "ties", "magmax"):
        spec = METHODS[name]
        assert spec.recipe["iterations"] == 1000 and spec.recipe["label_smoothing"] == 0.2, name
    assert (TIESConfig().k, TIESConfig().scaling, MagMaxConfig().scaling) == (20.0, 0.55, 0.5)


@pytest.mark.parametrize("name,scaling", [("task-arithmetic", 0.42), ("ties", 0.123), ("magmax", 0.77)])
def test_lambda_and_k_reach_the_maths_from_the_yaml(tmp_path, monkeypatch, name, scaling):
    seen = {}
    for fn in ("scaled_merge_into", "ties_merge_into", "trim"):
        original = getattr(merges_module, fn)

        def spy(*args, _fn=fn, _original=original, **kwargs):
            seen.setdefault(_fn, []).append(args)
            return _original(*args, **kwargs)

        monkeypatch.setattr(merges_module, fn, spy)
    session, trained = _session(tmp_path, name)
    _train(session, 2)
    theta0 = session.strategy.merging.merge.theta0
    deltas = [{k: w[k] - theta0[k] for k in w} for w in trained.weights]
    merged = _params(session)
    lam = torch.tensor(scaling, dtype=torch.float32)
    if name == "ties":
        assert [args[2] for args in seen["trim"]] == [37, 37]  # k on its way to the trim
        assert [args[3] for args in seen["ties_merge_into"]] == [scaling, scaling]
        tau = ties_reference(deltas, 37)
    else:
        assert [args[3] for args in seen["scaled_merge_into"]] == [scaling, scaling]
        tau = (magmax_reference(deltas) if name == "magmax"
               else {k: deltas[0][k] + deltas[1][k] for k in deltas[0]})
    for key, value in merged.items():  # the evaluated model is θ⁰ + λ·τ with the YAML's λ (and k)
        torch.testing.assert_close(value, theta0[key] + tau[key] * lam, rtol=0, atol=1e-6, msg=key)
    session.wandb.finish()


def test_task_arithmetic_without_scaling_averages_the_task_vectors(tmp_path):
    session, trained = _session(tmp_path, "ta-mean")
    _train(session, 2)
    theta0 = session.strategy.merging.merge.theta0
    for key, value in _params(session).items():
        mean = ((trained.weights[0][key] - theta0[key]) + (trained.weights[1][key] - theta0[key])) * 0.5
        torch.testing.assert_close(value, theta0[key] + mean, rtol=0, atol=1e-6)
    session.wandb.finish()


@pytest.mark.parametrize("name", ["task-arithmetic", "ties", "magmax"])
def test_every_task_starts_from_theta0_and_magmax_from_the_last_fine_tuned_weights(tmp_path, name):
    session, trained = _session(tmp_path, name)
    starts = []
    plugin = session.strategy.merging
    original = plugin.before_training_exp

    def record(strategy, **kwargs):
        original(strategy, **kwargs)
        starts.append(_params(session))

    plugin.before_training_exp = record
    _train(session, 2)
    # sequential fine-tuning (MagMax): θ_1, not the merged model; the others: θ⁰
    expected = trained.weights[0] if name == "magmax" else plugin.merge.theta0
    for key, value in expected.items():
        assert torch.equal(starts[1][key], value), key
    session.wandb.finish()


@pytest.mark.parametrize("name", ["task-arithmetic", "ties", "magmax"])
def test_extra_state_reports_theta0_and_the_stored_merge(tmp_path, name):
    session, _ = _session(tmp_path, name)
    _train(session, 2)
    plugin = session.strategy.merging
    report = extra_state_of(session.strategy.plugins)
    assert report == plugin.extra_state()
    stored = tensor_bytes(plugin.state_dict()) + tensor_bytes(plugin.merge.theta0)
    assert sum(report.values()) == stored > 0
    params = sum(p.numel() * p.element_size() for p in plugin.merge.params.values())
    expected_copies = {"task-arithmetic": 2, "magmax": 3}.get(name)
    if expected_copies:  # θ⁰ + running τ (+ MagMax's last weights): whole-model copies
        assert stored == expected_copies * params
    else:  # θ⁰ + per task: mask bits and ~k% of the values
        assert params < stored < params + 2 * (params // 32 + int(0.37 * params) + 64 * len(plugin.merge.params))
    session.wandb.finish()


MERGES = ["task-arithmetic", "ties", "magmax"]


@pytest.mark.parametrize("name", MERGES)
def test_resume_after_an_experience_gives_identical_numbers(tmp_path, monkeypatch, name):
    from runs.session import RunSession as Session

    class _Stop(KeyboardInterrupt):  # an interruption: the run keeps its checkpoint, no failure mark
        pass

    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(out=tmp_path / "out"))
    reference = run_suite(load_suite(path, output_dir=str(tmp_path / "ref")), only=[name])
    original = Session._save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise _Stop()

    monkeypatch.setattr(Session, "_save_checkpoint", save_then_stop)
    suite = load_suite(path)
    with pytest.raises(_Stop):
        run_suite(suite, only=[name])
    monkeypatch.undo()
    resumed = run_suite(suite, only=[name])
    (ref,), (res,) = reference.records, resumed.records
    assert res["matrix"] == ref["matrix"]  # bit-identical accuracies after the resumed experiences
    assert res["metrics"] == ref["metrics"]


def test_strategies_take_options_by_keyword_and_the_plugin_works_on_naive(tiny_model_factory):
    from avalanche.training.supervised import Naive

    model = tiny_model_factory("full")
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.0)
    ties = TIES(model=model, optimizer=optimizer, k=10.0, train_mb_size=4)
    assert ties.merging.cfg == TIESConfig(k=10.0, scaling=0.55)
    with pytest.raises(TypeError, match="no_such"):
        MagMax(model=model, optimizer=optimizer, no_such=1)
    assert TaskArithmetic(model=model, optimizer=optimizer).merging.cfg.scaling is None
    naive = Naive(model=model, optimizer=optimizer, plugins=[MergingPlugin(model, MagMaxConfig())])
    assert any(isinstance(p, MergingPlugin) for p in naive.plugins)


def test_a_model_without_trainable_tensors_is_refused_before_any_work(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(out=tmp_path / "out").replace("units: {kind: full}", "units: {kind: none}"))
    with pytest.raises(Exception, match="model.units.kind = none"):
        load_suite(path)


def test_condu_paper_suite_has_the_merging_rows():
    suite = load_suite(ROOT / "runs" / "suites" / "condu_paper.yaml")
    runs = {r.name: r for r in suite.runs}
    assert runs["ties"].method.cfg == TIESConfig(k=20.0, scaling=0.55)
    assert runs["magmax"].method.cfg == MagMaxConfig(scaling=0.5)
    assert runs["task-arithmetic"].method.cfg.scaling is None
    assert all(runs[n].model.units.kind == "full" for n in MERGES)


@pytest.mark.skipif(not (SHARED / "eurosat").is_dir(), reason=f"{SHARED}/eurosat not present")
def test_merging_tiny_suite_runs_end_to_end_on_real_images(tmp_path):
    suite = load_suite(ROOT / "runs" / "suites" / "merging_tiny.yaml",
                       overrides=[f"data_root={SHARED}", "stream.datasets=[EuroSAT]", "train.iterations=2"])
    suite.output_dir = str(tmp_path)
    records = {r["name"]: r for r in run_suite(suite, only=MERGES).records}
    for name in MERGES:
        matrix = np.asarray(records[name]["matrix"])
        assert matrix.shape == (1, 1) and 0.0 <= matrix[0, 0] <= 1.0, name
        config = yaml.safe_load((tmp_path / "merging_tiny" / f"{name}-seed0" / "config.yaml").read_text())
        assert config["method"]["name"] == name
    assert (tmp_path / "merging_tiny" / "results.md").exists()


@pytest.mark.parametrize("name", MERGES)
def test_resumed_state_gives_bit_identical_weights_after_the_next_experience(tmp_path, name):
    import io

    from runs import checkpoint

    straight, _ = _session(tmp_path / "a", name, capture=False)
    _train(straight, 1)
    ctx = checkpoint.Context(straight.strategy, straight.benchmark.scenario.train_stream)
    buffer = io.BytesIO()
    torch.save({"model": checkpoint.model_state(straight.model), "rng": checkpoint.rng_state(),
                "plugins": checkpoint.plugin_states(straight.strategy.plugins, ctx)}, buffer)
    straight.strategy.train(straight.benchmark.scenario.train_stream[1], eval_streams=[])

    resumed, _ = _session(tmp_path / "b", name, capture=False)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed.model.load_state_dict(state["model"], strict=False)
    checkpoint.load_plugin_states(resumed.strategy.plugins, state["plugins"],
                                  checkpoint.Context(resumed.strategy, resumed.benchmark.scenario.train_stream))
    checkpoint.set_rng_state(state["rng"])
    resumed.strategy.train(resumed.benchmark.scenario.train_stream[1], eval_streams=[])
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.strategy.merging.extra_state() == resumed.strategy.merging.extra_state()
    straight.wandb.finish()
    resumed.wandb.finish()
