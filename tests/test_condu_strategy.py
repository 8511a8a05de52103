"""ConDU plugin and strategy on the tiny CLIP: through the runner, and as plain Avalanche parts
(``ConDU(...)`` by keyword, ``Naive(plugins=[ConDUPlugin(...)])``, periodic evaluation); the ConDU
suites' recipes (official learning-rate tables, few-shot, task-agnostic)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from avalanche.benchmarks import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

from benchmarks.mtil import ORDER_I
from benchmarks.synthetic import TensorClassDataset
from runs.config import load_suite
from runs.runner import RunSession, run_suite
from strategies.clip import ModelConfig, UnitsConfig, build_clip
from strategies.condu import ConDU, ConDUConfig, ConDUPlugin, build_condu
from strategies.condu.fusion import decouple_reference
from strategies.condu.prototypes import class_prototypes
from strategies.condu.store import PRETRAINED
from strategies.training import TrainConfig

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
    images = images.to(session.model.device)  # train.device auto: the model may be on CUDA
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
    images = torch.randn(5, 3, 32, 32, device=model.device)
    with torch.no_grad():
        aggregated = plugin.predict(model, images, experience=1)
        expected = []
        for task in (PRETRAINED, 0, 1):
            if task == PRETRAINED:
                plugin.store.load(PRETRAINED, force=True)
            else:  # rebuild the decoupled model with the oracle, independently of the plugin's store
                delta = decouple_reference(plugin.unified, plugin.triggers[task])
                for name, param in plugin.params.items():
                    param.copy_(plugin.theta0[name] + delta[name])
            model.invalidate_text_cache()
            expected.append(model(images))
    plugin.store.loaded = None  # written behind the store's back
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
    records = {r["name"]: r for r in run_suite(suite, only=["finetune", "condu-ft"]).records}
    drop = {name: r["matrix"][0][0] - r["matrix"][-1][0] for name, r in records.items()}
    assert records["finetune"]["matrix"][0][0] > 0.6, "naive did not learn the first experience"
    assert drop["condu-ft"] < drop["finetune"], drop


def test_tiny_condu_suite_runs_end_to_end(tmp_path):
    records = run_suite(_suite(tmp_path), only=["zeroshot", "condu-lora"]).records
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
    images = torch.randn(3, 3, 32, 32, device=session.model.device)
    for model in (session.model, other.model):
        model.eval()
        model.set_active_classes([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        a = session.strategy.condu.predict(session.model, images, experience=2)
        b = other.strategy.condu.predict(other.model, images, experience=2)
    torch.testing.assert_close(a, b)
    other.wandb.finish()


# --------------------------------------------------------------------------- plain Avalanche use
NAMES = ["apple", "bicycle", "cloud", "dolphin", "engine", "forest"]


def _stream(task_labels: bool = False, train_transform=None):
    """6 classes in 3 experiences of tensors (class pattern + noise), as a user builds with Avalanche."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.randn(6, 3, 32, 32, generator=gen)

    def draw(per_class: int) -> TensorClassDataset:
        y = torch.arange(6).repeat_interleave(per_class)
        return TensorClassDataset(1.5 * patterns[y] + torch.randn(len(y), 3, 32, 32, generator=gen), y)

    return nc_benchmark(draw(16), draw(4), n_experiences=3, task_labels=task_labels, shuffle=False,
                        train_transform=train_transform)


def _model(kind: str = "lora", seed: int = 0):
    torch.manual_seed(seed)
    units = UnitsConfig(kind=kind, lora_rank=4) if kind == "lora" else UnitsConfig(kind=kind)
    model, _, _ = build_clip(ModelConfig(arch="clip-tiny", pretrained="none", units=units))
    model.set_class_prompts([[f"a photo of a {n}.", f"a {n}.", f"art of the {n}."] for n in NAMES])
    return model


def _avalanche_kwargs(model, **kwargs):
    return {"optimizer": torch.optim.AdamW(model.trainable_parameters(), lr=3e-3), "train_mb_size": 16,
            "eval_mb_size": 32, "evaluator": EvaluationPlugin(), **kwargs}


class _Outputs(SupervisedPlugin):
    """Records every evaluation minibatch's output, as Avalanche's metrics see it."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[torch.Tensor] = []

    def after_eval_iteration(self, strategy, **kwargs) -> None:
        self.outputs.append(strategy.mb_output.detach().clone())


def _periodic_run(eval_every: int):
    model = _model()
    bench = _stream()
    strategy = ConDU(model=model, criterion=torch.nn.CrossEntropyLoss(), inference="task_aware",
                     **_avalanche_kwargs(model, train_epochs=3, eval_every=eval_every))
    evals = []
    strategy.plugins.insert(0, type("Count", (SupervisedPlugin,), {
        "before_eval": lambda self, s, **k: evals.append(s.clock.train_exp_epochs)})())
    for experience in bench.train_stream[:2]:
        strategy.train(experience, eval_streams=[bench.test_stream])
    images = torch.stack([bench.test_stream[0].dataset[i][0] for i in range(8)])
    model.eval()
    with torch.no_grad():
        logits = [strategy.condu.predict(model, images, e) for e in (0, 1)]
    return strategy.condu, logits, evals


def test_periodic_evaluation_leaves_training_unchanged():
    # Avalanche's eval_every=1: evaluations before training, after every epoch of both experiences
    plain, plain_logits, no_evals = _periodic_run(-1)
    periodic, periodic_logits, evals = _periodic_run(1)
    assert no_evals == [] and len(evals) >= 6, evals
    for a, b in zip(plain_logits, periodic_logits, strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(plain.unified[n], periodic.unified[n]) for n in plain.unified)
    assert [t.rescaler for t in plain.triggers] == [t.rescaler for t in periodic.triggers]


@pytest.mark.parametrize("inference", ["aggregated", "task_aware"])
def test_naive_with_the_plugin_predicts_what_condu_predicts(inference):
    bench = _stream()
    results = {}
    for name in ("condu", "naive"):
        model = _model(seed=1)
        outputs = _Outputs()
        if name == "condu":
            strategy = ConDU(model=model, criterion=torch.nn.CrossEntropyLoss(), inference=inference,
                             top_k=1, plugins=[outputs], **_avalanche_kwargs(model))
            plugin = strategy.condu
        else:
            plugin = ConDUPlugin(model, inference=inference, top_k=1)
            strategy = Naive(model=model, criterion=torch.nn.CrossEntropyLoss(), plugins=[plugin, outputs],
                             **_avalanche_kwargs(model))
        torch.manual_seed(2)
        for experience in bench.train_stream[:2]:
            strategy.train(experience)
        strategy.eval(bench.test_stream)
        results[name] = (outputs.outputs, plugin, model)
    condu_out, naive_out = results["condu"][0], results["naive"][0]
    assert len(condu_out) == len(naive_out) == 3
    for a, b in zip(condu_out, naive_out, strict=True):
        assert torch.equal(a, b)
    _, plugin, model = results["naive"]
    images = torch.stack([bench.test_stream[0].dataset[i][0] for i in range(len(bench.test_stream[0].dataset))])
    plugin.store.load(PRETRAINED)
    with torch.no_grad():
        zero_shot = model(images)
    assert (naive_out[0] - zero_shot).abs().max() > 1e-3  # not the pretrained θ⁰'s prediction


def test_condu_is_configured_by_keyword_like_avalanche_strategies():
    model = _model()
    strategy = ConDU(model=model, optimizer=torch.optim.AdamW(model.trainable_parameters()),
                     criterion=torch.nn.CrossEntropyLoss(), top_k=2, inference="aggregated", weighting="softmax",
                     prototype_text="normalized", train_mb_size=8, evaluator=EvaluationPlugin())
    assert strategy.condu.cfg == ConDUConfig(top_k=2, inference="aggregated", weighting="softmax",
                                             prototype_text="normalized")
    assert strategy.train_mb_size == 8 and strategy.condu in strategy.plugins
    default = ConDU(model=_model(), optimizer=torch.optim.AdamW(model.trainable_parameters()))
    assert default.condu.cfg == ConDUConfig() and isinstance(default._criterion, torch.nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match="inference='always'; allowed: auto, task_aware, aggregated"):
        ConDU(model=_model(), optimizer=torch.optim.AdamW(model.trainable_parameters()), inference="always")
    with pytest.raises(TypeError, match=r"unknown options \['task_aware'\]; allowed: inference, top_k"):
        ConDUPlugin(_model(), task_aware=True)
    with pytest.raises(ValueError, match="prototype_images_from='test'; allowed: train, eval"):
        ConDUPlugin(_model(), prototype_images_from="test")
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        ConDUPlugin(_model(), ConDUConfig(top_k=-1))
    with pytest.raises(ValueError, match="ConDU needs trainable parameters"):
        ConDUPlugin(_model(kind="none"))


@pytest.mark.parametrize(("task_labels", "inference", "routes"), [
    (True, "auto", [0, None, None]),  # task-incremental stream: the trained task's model, zero-shot elsewhere
    (False, "auto", [None, None, None]),  # class-incremental: always aggregated
    (False, "task_aware", [0, None, None]),
    (True, "aggregated", [None, None, None]),
])
def test_auto_inference_follows_the_streams_task_labels(task_labels, inference, routes):
    plugin = ConDUPlugin(_model(), inference=inference)
    plugin.task_of_experience = {0: 0}  # experience 0 trained (task 0)
    assert [plugin.route(e) for e in _stream(task_labels).test_stream] == routes


def _template_means(model, classes):
    out = []
    with torch.no_grad():
        for c in classes:
            tokens = model.tokenizer(model.class_prompts[c])
            out.append(F.normalize(model.clip.encode_text(tokens), dim=-1).mean(0))  # not re-normalised
    return torch.stack(out)


@pytest.mark.parametrize(("images_from", "text"), [("train", "mean"), ("eval", "normalized")])
def test_prototypes_use_the_training_transform_and_the_template_mean(images_from, text):
    bench = _stream(train_transform=lambda x: x.flip(-1) + 0.5)  # a visible training augmentation
    model = _model()
    strategy = Naive(model=model, criterion=torch.nn.CrossEntropyLoss(),
                     plugins=[plugin := ConDUPlugin(model, prototype_images_from=images_from, prototype_text=text)],
                     **_avalanche_kwargs(model))
    theta0 = {n: p.detach().clone() for n, p in plugin.params.items()}
    strategy.train(bench.train_stream[0])
    data = bench.train_stream[0].dataset
    data = data.train() if images_from == "train" else data.eval()
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    classes = sorted(bench.train_stream[0].classes_in_this_experience)
    with torch.no_grad():
        for name, value in theta0.items():
            plugin.params[name].copy_(value)
        model.eval()
        features = model.encode_image(images)
        expected = class_prototypes(features, labels, _template_means(model, classes), classes,
                                    normalize_text=text == "normalized")
    torch.testing.assert_close(plugin.prototypes[0], expected, rtol=0, atol=1e-5)
    other = class_prototypes(model.encode_image(torch.stack([bench.train_stream[0].dataset.eval()[i][0]
                                                             for i in range(len(data))]) if images_from == "train"
                                                else images.flip(-1) + 0.5).detach(),
                             labels, _template_means(model, classes), classes, normalize_text=text == "normalized")
    assert (plugin.prototypes[0] - other).abs().max() > 1e-3  # the other transform gives other prototypes


def test_runner_builder_uses_the_public_constructor():
    model = _model()
    kwargs = {"train": TrainConfig(batch_size=8), "plugins": [], "evaluator": EvaluationPlugin(), "device": "cpu",
              "criterion": torch.nn.CrossEntropyLoss()}
    mtil = build_condu(model, ConDUConfig(top_k=3), benchmark=SimpleNamespace(protocol="task"), **kwargs)
    assert type(mtil) is ConDU and mtil.condu.cfg == ConDUConfig(top_k=3, inference="task_aware")
    seen = build_condu(_model(), ConDUConfig(top_k=3), benchmark=SimpleNamespace(protocol="seen"), **kwargs)
    assert seen.condu.cfg.inference == "auto" and seen.train_mb_size == 8
    forced = build_condu(_model(), ConDUConfig(), benchmark=SimpleNamespace(protocol="seen"), task_aware=True,
                         **kwargs)
    assert forced.condu.cfg.inference == "task_aware"
    explicit = build_condu(_model(), ConDUConfig(inference="aggregated"), benchmark=SimpleNamespace(protocol="task"),
                           **kwargs)
    assert explicit.condu.cfg.inference == "aggregated"


# --------------------------------------------------------------------------- the ConDU suites' recipes
FT_LR = dict.fromkeys(ORDER_I, 1e-5) | {"Aircraft": 5e-5, "MNIST": 5e-5}  # scripts/MTIL_FT.sh
LORA_LR = dict(zip(ORDER_I, [1e-3, 5e-4, 2e-3, 2e-3, 1.5e-4, 1e-5, 2e-3, 1e-3, 1.5e-4, 2e-3, 1.5e-3], strict=True))
FEWSHOT_FT_LR = dict.fromkeys(ORDER_I, 1e-5) | {"Aircraft": 5e-5, "OxfordPet": 5e-5}  # scripts/fewshot_MTIL_FT.sh
FEWSHOT_LORA_LR = dict(zip(ORDER_I, [3e-3, 8e-4, 1.5e-3, 2e-3, 3e-4, 1e-5, 2e-3, 2.5e-3, 3e-4, 2e-3, 2e-3],
                           strict=True))


def _resolved_lr(run) -> dict[str, float]:
    """Peak lr per MTIL experience as RecipePlugin resolves it: lr_by_experience[name], else lr."""
    assert set(run.train.lr_by_experience) <= set(ORDER_I)
    return {name: run.train.lr_by_experience.get(name, run.train.lr) for name in ORDER_I}


@pytest.mark.parametrize(("suite_name", "tables", "iterations", "shots", "inference"), [
    ("condu_paper", {"condu-ft": FT_LR, "condu-lora": LORA_LR, "finetune": FT_LR}, 1000, None, "auto"),
    ("condu_task_agnostic", {"condu-ft": FT_LR, "condu-lora": LORA_LR}, 1000, None, "aggregated"),
    ("condu_fewshot", {"condu-ft": FEWSHOT_FT_LR, "condu-lora": FEWSHOT_LORA_LR, "finetune": FEWSHOT_FT_LR},
     500, 5, "auto"),
])
def test_condu_suites_resolve_to_the_official_tables(suite_name, tables, iterations, shots, inference):
    suite = load_suite(ROOT / "runs" / "suites" / f"{suite_name}.yaml")
    runs = {r.name: r for r in suite.runs}
    for name, table in tables.items():
        assert _resolved_lr(runs[name]) == pytest.approx(table, rel=0, abs=0), name
    for run in suite.runs:
        assert run.stream.name == "mtil" and run.stream.cfg.order == "I" and run.stream.cfg.shots == shots
        if run.method.name == "condu":
            assert run.train.iterations == iterations and run.train.batch_size == 64 and run.train.warmup == 100
            assert run.train.label_smoothing == 0.2 and run.train.weight_decay == 0.0
            assert run.method.cfg.inference == inference and run.method.cfg.top_k == 4
    assert runs["condu-lora"].model.units.kind == "lora" and runs["condu-lora"].model.units.lora_rank == 64
    assert runs["condu-ft"].model.units.kind == "full"


@pytest.mark.parametrize("suite_name", ["condu_fewshot", "condu_task_agnostic"])
def test_tiny_variant_of_the_condu_suites_runs(tmp_path, suite_name):
    suite = load_suite(ROOT / "runs" / "suites" / f"{suite_name}.yaml",
                       overrides=[*TINY, "train.iterations=4"])
    suite.output_dir = str(tmp_path)
    run = next(r for r in suite.runs if r.name == "condu-lora")
    session = RunSession(suite, run, 0)
    session.build()
    routes = []
    session.strategy.plugins.insert(0, type("Routes", (SupervisedPlugin,), {
        "after_eval_exp": lambda self, s, **k: routes.append(s.condu._route)})())
    rows = []
    for step in range(2):
        session.strategy.train(session.benchmark.scenario.train_stream[step])
        rows.append(session.evaluate())
    assert np.all(np.isfinite(rows)) and len(session.strategy.condu.triggers) == 2
    if suite_name == "condu_task_agnostic":
        assert routes == [None] * 6  # aggregated on every experience, every session
    session.wandb.finish()
