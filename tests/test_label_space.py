"""One label space for every protocol: the loss over the active classes, active classes taken from
Avalanche's experiences (no CLIPBenchmark needed), and training vs evaluation prompts."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from benchmarks.base import StreamContext
from benchmarks.synthetic import SyntheticStreamConfig, _draw, build_synthetic
from strategies.clip import MASKED_LOGIT, ModelConfig, UnitsConfig, build_clip
from strategies.training import ActiveClassCrossEntropy, LabelSpacePlugin, TrainConfig, make_criterion

M = MASKED_LOGIT
SMOKE_CONDU = """
name: condu-loss
wandb: {mode: disabled}
defaults:
  model: {arch: clip-tiny, pretrained: none, units: {kind: lora, lora_rank: 4}}
  stream: {name: synthetic, n_classes: 6, n_experiences: 3, train_per_class: 4, test_per_class: 2}
  train: {iterations: 3, batch_size: 8, lr: 0.001, warmup: 1, label_smoothing: 0.2, augment: false}
runs:
  - method: condu
"""


# ---- the loss over the active classes --------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_label_smoothed_loss_over_active_classes_by_hand(eps):
    # 4 global classes, 1 and 3 active. Row 0: active logits (1, 0), target 1; row 1: (0, ln 3), target 3.
    logits = torch.tensor([[M, 1.0, M, 0.0], [M, 0.0, M, math.log(3.0)]])
    targets = torch.tensor([1, 3])
    # row 0: p = (e/(e+1), 1/(e+1)); row 1: p = (1/4, 3/4)
    nll0, other0 = math.log(1 + math.exp(-1)), math.log(1 + math.e)
    nll1, other1 = -math.log(3 / 4), -math.log(1 / 4)
    row0 = (1 - eps) * nll0 + eps / 2 * (nll0 + other0)
    row1 = (1 - eps) * nll1 + eps / 2 * (nll1 + other1)
    loss = make_criterion(TrainConfig(label_smoothing=eps))(logits, targets)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_loss_equals_smoothed_ce_on_the_active_columns_with_its_gradient():
    gen = torch.Generator().manual_seed(0)
    active = [0, 2, 5]
    scores = torch.randn(8, 3, generator=gen, requires_grad=True)  # (B, A)
    logits = torch.full((8, 7), M).index_copy(1, torch.tensor(active), scores)  # (B, K)
    targets = torch.tensor(active)[torch.randint(0, 3, (8,), generator=gen)]
    loss = ActiveClassCrossEntropy(0.2)(logits, targets)
    reference = F.cross_entropy(scores, torch.tensor([active.index(int(t)) for t in targets]), label_smoothing=0.2)
    torch.testing.assert_close(loss, reference)
    (grad,) = torch.autograd.grad(loss, scores)
    (ref_grad,) = torch.autograd.grad(reference, scores)
    torch.testing.assert_close(grad, ref_grad)
    # what the plain global-class loss gives: ε spread over the masked columns dominates it
    assert F.cross_entropy(logits, targets, label_smoothing=0.2).item() > 1000
    # every column active: plain cross-entropy
    full = torch.randn(4, 5, generator=gen)
    y = torch.tensor([0, 4, 2, 1])
    torch.testing.assert_close(ActiveClassCrossEntropy(0.1)(full, y), F.cross_entropy(full, y, label_smoothing=0.1))


def test_masked_target_and_bad_smoothing_are_clear_errors():
    with pytest.raises(ValueError, match=r"targets \[0\] are masked \(inactive\) classes"):
        ActiveClassCrossEntropy(0.1)(torch.tensor([[M, 1.0, 2.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"train.label_smoothing must be in \[0, 1\), got 1.5"):
        make_criterion(TrainConfig(label_smoothing=1.5))


# ---- active classes from the Avalanche experience ------------------------------------------------
def _fake_strategy(classes: list[int]) -> SimpleNamespace:
    model = SimpleNamespace(active=None, prompts=None)
    model.set_active_classes = lambda ids: setattr(model, "active", list(ids))
    model.use_prompts = lambda name: setattr(model, "prompts", name)
    return SimpleNamespace(model=model, experience=SimpleNamespace(classes_in_this_experience=classes))


@pytest.mark.parametrize("train_space,protocol,train_active,eval_active", [
    ("current", "seen", [4, 7], [1, 2, 4, 7, 9]),
    ("seen", "seen", [1, 2, 4, 7], [1, 2, 4, 7, 9]),
    ("current", "task", [4, 7], [2, 9]),
])
def test_plugin_takes_classes_from_the_experience(train_space, protocol, train_active, eval_active):
    plugin = LabelSpacePlugin(train_label_space=train_space, protocol=protocol)
    plugin.before_training_exp(_fake_strategy([2, 1]))
    strategy = _fake_strategy([7, 4])
    plugin.before_training_exp(strategy)
    assert strategy.model.active == train_active and strategy.model.prompts == "train"
    strategy = _fake_strategy([9, 2])  # a test experience not trained yet
    plugin.before_eval_exp(strategy)
    assert strategy.model.active == eval_active and strategy.model.prompts == "eval"
    restored = LabelSpacePlugin(train_label_space=train_space, protocol=protocol)
    restored.load_state_dict(plugin.state_dict())
    assert restored.seen == {1, 2, 4, 7}


@pytest.mark.parametrize("task_labels,eval_active", [([0, 0], [1, 2, 9]), ([0, 1], [9])])
def test_plugin_auto_protocol_follows_the_streams_task_labels(task_labels, eval_active):
    plugin = LabelSpacePlugin()  # no benchmark: protocol "auto"
    plugin.before_training_exp(_fake_strategy([2, 1]))
    stream = [SimpleNamespace(task_labels=[t]) for t in task_labels]
    strategy = _fake_strategy([9])
    strategy.experience.origin_stream = stream
    plugin.before_eval_exp(strategy)
    assert strategy.model.active == eval_active  # class-incremental: seen + own; task-incremental: own


def test_plugin_rejects_unknown_label_space_and_protocol():
    with pytest.raises(ValueError, match=r"train_label_space='all'; allowed: current, seen"):
        LabelSpacePlugin(train_label_space="all")
    with pytest.raises(ValueError, match=r"protocol='domain'; allowed: auto, seen, task"):
        LabelSpacePlugin(protocol="domain")


def _tiny_model(**units):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="clip-tiny", pretrained="none",
                      units=UnitsConfig(kind="adapter", bottleneck=16, dropout=0.0, **units))
    return build_clip(cfg)[0]


def test_plain_avalanche_benchmark_gets_the_right_label_space():
    """nc_benchmark over tensors, class names given to the model, Naive + LabelSpacePlugin()."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.randn(6, 3, 32, 32, generator=gen)  # (C, 3, H, W)
    train, test = _draw(patterns, 16, 1.5, gen), _draw(patterns, 8, 1.5, gen)
    bench = nc_benchmark(train, test, n_experiences=3, task_labels=False, shuffle=False,
                         fixed_class_order=[3, 0, 5, 1, 4, 2])
    model = _tiny_model()
    names = ["apple", "bicycle", "cloud", "dolphin", "engine", "forest"]
    model.set_class_prompts([[f"a photo of a {n}."] for n in names])
    seen_spaces: dict[str, list[int]] = {}

    class Record(SupervisedPlugin):  # a SupervisedPlugin recording the active classes
        def before_training_iteration(self, strategy, **kwargs):
            seen_spaces["train"] = list(strategy.model.active_classes)

        def after_eval_forward(self, strategy, **kwargs):
            seen_spaces.setdefault("eval", [])
            seen_spaces["eval"] = sorted(set(seen_spaces["eval"]) | set(strategy.model.active_classes))
            assert set(strategy.mb_output.argmax(1).tolist()) <= set(strategy.model.active_classes)

    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loss_metrics(epoch=True))
    strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.trainable_parameters(), lr=0.01),
                     criterion=make_criterion(TrainConfig(label_smoothing=0.2)), train_mb_size=16,
                     train_epochs=3, eval_mb_size=64, plugins=[LabelSpacePlugin(), Record()],
                     evaluator=evaluator, device="cpu")
    strategy.train(bench.train_stream[0])
    results = strategy.eval(bench.test_stream[:2])
    assert seen_spaces["train"] == [0, 3]  # experience 0's classes
    assert seen_spaces["eval"] == [0, 1, 3, 5]  # seen (0, 3) + experience 1's own (1, 5)
    # trained on 2 classes scored among the seen ones: learnt (chance would be 0.5)
    assert results["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] >= 0.75
    # label smoothing 0.2 over 2 active classes: a normal loss, not ~ 0.2/6 * 1e4 * 4 = 1333
    assert results["Loss_Epoch/train_phase/train_stream/Task000"] < 1.0


# ---- training vs evaluation prompts ---------------------------------------------------------------
def _hand_text(model, prompts: list[list[str]]) -> torch.Tensor:
    """Reference text features: normalised mean of normalised prompt embeddings, from open_clip."""
    with torch.no_grad():
        feats = [F.normalize(F.normalize(model.clip.encode_text(model.tokenizer(p)), dim=-1).mean(0), dim=0)
                 for p in prompts]
    return torch.stack(feats)  # (K, D)


def test_training_uses_train_prompts_and_evaluation_eval_prompts():
    """As the runner does: the model gets the benchmark's class prompts, the plugin the benchmark."""
    model = _tiny_model(branches=["vision"])  # frozen text side: the reference features stay valid
    cfg = SyntheticStreamConfig(n_classes=4, n_experiences=2, train_per_class=4, test_per_class=2,
                                train_templates=["a photo of a {}."],
                                eval_templates=["a drawing of a {}.", "art of the {}."])
    bench = build_synthetic(cfg, StreamContext(".", None, None, 32))
    assert bench.train_prompts[0] == ["a photo of a apple."]
    assert bench.class_prompts[0] == ["a drawing of a apple.", "art of the apple."]
    model.set_class_prompts(bench.class_prompts)
    ref = {"train": _hand_text(model, bench.train_prompts), "eval": _hand_text(model, bench.class_prompts)}
    checked: list[str] = []

    class Check(SupervisedPlugin):
        def _check(self, strategy, phase: str) -> None:
            active = strategy.model.active_classes
            with torch.no_grad():
                image = strategy.model.encode_image(strategy.mb_x)
            expected = strategy.model.clip.logit_scale.exp() * image @ ref[phase][active].t()
            torch.testing.assert_close(strategy.mb_output[:, active].detach(), expected, atol=1e-4, rtol=1e-4)
            checked.append(phase)

        def after_forward(self, strategy, **kwargs):
            self._check(strategy, "train")

        def after_eval_forward(self, strategy, **kwargs):
            self._check(strategy, "eval")

    strategy = SupervisedTemplate(model=model, optimizer=torch.optim.SGD(model.trainable_parameters(), lr=0.01),
                                  criterion=make_criterion(TrainConfig()), train_mb_size=4, train_epochs=1,
                                  eval_mb_size=8, plugins=[LabelSpacePlugin(bench, "current"), Check()],
                                  evaluator=EvaluationPlugin(), device="cpu")
    strategy.train(bench.scenario.train_stream[0])
    strategy.eval(bench.scenario.test_stream)
    assert "train" in checked and "eval" in checked
    assert not torch.allclose(ref["train"], ref["eval"])  # the two prompt sets really differ


def test_runner_trains_with_the_active_class_loss(tmp_path):
    """The runner's criterion is the active-class loss: ConDU's smoothed loss on 6 classes is normal."""
    from runs.config import load_suite
    from runs.runner import RunSession

    path = tmp_path / "condu.yaml"
    path.write_text(SMOKE_CONDU)
    suite = load_suite(path)
    suite.output_dir = str(tmp_path)
    session = RunSession(suite, suite.runs[0], 0)
    session.out = tmp_path / "condu"
    session.build()
    criterion = session.strategy._criterion
    assert isinstance(criterion, ActiveClassCrossEntropy) and criterion.label_smoothing == 0.2
    losses: list[float] = []

    class Losses(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            losses.append(float(strategy.loss))

    session.strategy.plugins.append(Losses())
    session.strategy.train(session.benchmark.scenario.train_stream[0], eval_streams=[])
    session.wandb.finish()
    assert len(losses) == 3 and all(0 < loss < 5 for loss in losses), losses


def test_condu_prototype_text_uses_the_eval_prompts_while_training():
    """ConDU's prototypes are built right after training (prompt set "train"): their text half is
    the mean of the normalised *evaluation* prompt features (condu.md "Prompts")."""
    from strategies.condu.plugin import ConDUPlugin

    model = _tiny_model()
    eval_prompts = [["a photo of a cat.", "art of a cat."], ["a photo of a dog.", "a dog toy."]]
    model.set_class_prompts(eval_prompts, train_prompts=[["a cat."], ["a dog."]])
    model.use_prompts("train")
    with torch.no_grad():
        expected = torch.stack([F.normalize(model.clip.encode_text(model.tokenizer(p)), dim=-1).mean(0)
                                for p in eval_prompts])  # (C, D), not re-normalised
    torch.testing.assert_close(ConDUPlugin._template_means(model, [0, 1]), expected, atol=1e-5, rtol=0)
    assert model.prompt_set == "train"  # restored
