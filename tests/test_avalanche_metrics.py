"""[workflow] Own-script path = runner path: the project's metrics as Avalanche PluginMetrics in a plain
Avalanche loop give the runner's numbers; Replay with the default LabelSpacePlugin names the Python
argument to set. Tiny random-weight CLIP on generated patterns (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from torch.utils.data import TensorDataset

from runs import metrics as formulas
from runs.avalanche_metrics import MatrixMetric, continual_metrics, running_transfer
from strategies.clip import ModelConfig, UnitsConfig, build_clip, image_size
from strategies.training import ActiveClassCrossEntropy, LabelSpacePlugin, RecipePlugin, TrainConfig

NAMES = ["apple", "bicycle", "cloud", "dolphin", "engine", "forest"]


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model, _, _ = build_clip(ModelConfig(arch="clip-tiny", pretrained="none",
                                         units=UnitsConfig(kind="adapter", bottleneck=8)), "cpu")
    model.set_class_prompts([[f"a photo of a {n}."] for n in NAMES])
    gen = torch.Generator().manual_seed(seed)
    size = image_size(model)
    patterns = torch.randn((len(NAMES), 3, size, size), generator=gen)

    def draw(n: int) -> TensorDataset:
        y = torch.arange(len(NAMES)).repeat_interleave(n)
        return TensorDataset(2.0 * patterns[y] + torch.randn((len(y), 3, size, size), generator=gen), y)

    return model, nc_benchmark(draw(8), draw(4), n_experiences=3, task_labels=False, seed=seed)


def test_plugin_metrics_in_a_plain_avalanche_loop_equal_the_runner_formulas():
    model, bench = _setup()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), *continual_metrics("seen"), loggers=[])
    recipe = RecipePlugin(TrainConfig(lr=1e-2, warmup=1, batch_size=8))
    strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.trainable_parameters(), lr=1e-2),
                     criterion=ActiveClassCrossEntropy(), train_mb_size=8, eval_mb_size=16, device="cpu",
                     plugins=[LabelSpacePlugin(), recipe], evaluator=evaluator)
    strategy.eval(bench.test_stream)  # the zero-shot row: in no metric
    rows = []
    for experience in bench.train_stream:
        strategy.train(experience)
        results = strategy.eval(bench.test_stream)
        rows.append([results[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"] for j in range(3)])
    sizes = [len(e.dataset) for e in bench.test_stream]
    expected = formulas.summarize(np.asarray(rows), sizes, "seen")
    for key, title in (("avg", "Avg"), ("last", "Last"), ("forgetting", "Forgetting"), ("bwt", "BWT")):
        assert results[f"{title}/eval_phase/test_stream"] == pytest.approx(expected[key], abs=1e-12), key
    metric = next(m for m in evaluator.metrics if isinstance(m, MatrixMetric))
    assert metric.zero_shot is not None and metric.matrix().shape == (3, 3)


def test_transfer_so_far_ends_at_the_mtil_transfer():
    rows = np.random.default_rng(0).random((4, 4))
    assert running_transfer(rows) == pytest.approx(formulas.transfer(rows))
    with pytest.raises(ValueError, match="protocol='task'"):
        MatrixMetric("transfer", "seen")
    assert [str(m) for m in continual_metrics("task")] == ["Avg", "Last", "Forgetting", "BWT", "Transfer"]


def test_replay_with_the_default_label_space_names_the_python_argument():
    model, bench = _setup()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.trainable_parameters(), lr=1e-3),
                     criterion=ActiveClassCrossEntropy(), train_mb_size=8, device="cpu",
                     plugins=[ReplayPlugin(mem_size=12), LabelSpacePlugin()], evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bench.train_stream[0])
    with pytest.raises(ValueError, match=r'LabelSpacePlugin\(train_label_space="seen"\)'):
        strategy.train(bench.train_stream[1])
