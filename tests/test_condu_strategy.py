"""ConDU plugin and strategy on the tiny CLIP (issue: ConDU, parts 2-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from runs.config import load_suite
from runs.runner import RunSession, run_suite
from strategies.condu.fusion import decouple_into
from strategies.condu.plugin import PRETRAINED

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.arch=clip-tiny", "model.pretrained=none", "model.units.lora_rank=8",
    "stream={name: synthetic, n_classes: 6, n_experiences: 3, train_per_class: 24, test_per_class: 8}",
    "train.iterations=12", "train.batch_size=16", "train.warmup=2", "train.lr=0.003", "train.lr_by_experience={}",
    "train.augment=false", "data_root=.", "eval.zero_shot_row=false",
]


def _suite(tmp_path, extra=()):
    suite = load_suite(ROOT / "runs" / "suites" / "condu_paper.yaml", overrides=[*TINY, *extra])
    suite.output_dir = str(tmp_path)
    return suite


class _Capture:
    """Records the fine-tuned model's logits on fixed images right after each experience's training."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.logits = images, []

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def after_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.eval()
        with torch.no_grad():
            self.logits.append(strategy.model(self.images))


def _session(tmp_path, run_name="condu-lora", **method):
    suite = _suite(tmp_path)
    run = next(r for r in suite.runs if r.name == run_name)
    for key, value in method.items():  # method options of this run only
        setattr(run.method.cfg, key, value)
    session = RunSession(suite, run, 0)
    session.build()
    return session


def test_task_aware_with_one_task_equals_the_finetuned_model(tmp_path):
    session = _session(tmp_path, inference="task_aware")
    images = torch.stack([session.benchmark.scenario.test_stream[0].dataset[i][0] for i in range(6)])
    capture = _Capture(images)
    session.strategy.plugins.insert(0, capture)  # runs before ConDU's after_training_exp
    session.strategy.train(session.benchmark.scenario.train_stream[0], eval_streams=[])
    plugin = session.strategy.condu
    assert len(plugin.triggers) == 1 and plugin.triggers[0].rescaler == 1.0
    with torch.no_grad():
        task_aware = plugin.predict(session.model, images, experience=0)
    torch.testing.assert_close(task_aware, capture.logits[0], rtol=0, atol=1e-5)
    session.wandb.finish()


def test_aggregation_with_k_at_least_tasks_is_the_mean_of_all_models(tmp_path):
    session = _session(tmp_path, top_k=5, inference="aggregated")
    for step in range(2):
        session.strategy.train(session.benchmark.scenario.train_stream[step], eval_streams=[])
    plugin, model = session.strategy.condu, session.model
    model.eval()
    model.set_active_classes(sorted(c for e in session.benchmark.experience_classes[:2] for c in e))
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        aggregated = plugin.predict(model, images, experience=1)
        expected = []
        for task in (PRETRAINED, 0, 1):
            plugin.loaded = None
            if task == PRETRAINED:
                plugin.load(PRETRAINED)
            else:  # rebuild the decoupled model independently of the plugin's cache
                decouple_into(plugin.params, plugin.theta0, plugin.unified, plugin.triggers[task])
            model.invalidate_text_cache()
            expected.append(model(images))
    plugin.loaded = None
    torch.testing.assert_close(aggregated, torch.stack(expected).mean(0), rtol=1e-5, atol=1e-4)
    session.wandb.finish()


def test_each_experience_starts_from_theta0_and_storage_is_reported(tmp_path):
    session = _session(tmp_path)
    plugin = session.strategy.condu
    starts = []

    class _Start(_Capture):
        def after_training_exp(self, strategy, **kwargs):
            pass

        def before_training_iteration(self, strategy, **kwargs):
            if strategy.clock.train_exp_iterations == 0:
                starts.append({n: p.detach().clone() for n, p in plugin.params.items()})

    session.strategy.plugins.append(_Start(None))
    for step in range(2):
        session.strategy.train(session.benchmark.scenario.train_stream[step], eval_streams=[])
    for start in starts:
        for name, value in start.items():
            assert torch.equal(value, plugin.theta0[name]), name
    report = plugin.storage()
    lora_params = sum(p.numel() for p in plugin.params.values())
    assert report["unified"] == report["theta0"] == 4 * lora_params
    assert report["per_task"][0]["mask"] == sum((p.numel() + 7) // 8 for p in plugin.params.values())
    assert report["per_task"][0]["prototypes"] == 2 * 64 * 4  # 2 classes × 64-d float32
    session.wandb.finish()


def test_condu_forgets_less_than_naive_on_the_first_experience(tmp_path):
    # class-incremental evaluation (seen classes), ConDU's task-agnostic aggregated prediction
    suite = _suite(tmp_path, ["model.units.kind=full", "train.lr=0.001", "train.iterations=24"])
    records = {r["name"]: r for r in run_suite(suite, only=["finetune", "condu-ft"])}
    drop = {name: r["matrix"][0][0] - r["matrix"][-1][0] for name, r in records.items()}
    assert records["finetune"]["matrix"][0][0] > 0.6, "naive did not learn the first experience"
    assert drop["condu-ft"] < drop["finetune"], drop


def test_tiny_condu_suite_runs_end_to_end(tmp_path):
    records = run_suite(_suite(tmp_path), only=["zeroshot", "condu-lora"])
    assert sorted(r["name"] for r in records) == ["condu-lora", "zeroshot"]
    for record in records:
        assert np.all(np.isfinite(record["matrix"]))
    assert "| condu-lora |" in (tmp_path / "condu_paper" / "results.md").read_text()


def test_condu_state_dict_round_trip_gives_the_same_predictions(tmp_path):
    session = _session(tmp_path)
    session.strategy.train(session.benchmark.scenario.train_stream[0], eval_streams=[])
    state = session.strategy.condu.state_dict()
    session.wandb.finish()
    other = _session(tmp_path / "b")
    other.strategy.condu.load_state_dict(state)
    images = torch.randn(3, 3, 32, 32)
    for model in (session.model, other.model):
        model.eval()
        model.set_active_classes([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        a = session.strategy.condu.predict(session.model, images, experience=2)
        b = other.strategy.condu.predict(other.model, images, experience=2)
    torch.testing.assert_close(a, b)
    other.wandb.finish()
