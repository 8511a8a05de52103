"""ZSCL and its family on one trainer: each term against hand-computed values, the presets' options on their
way to the trainer, the teacher and reference data, WE / WiSE carried to the next task, costs, resume, the
missing-reference refusal and the tiny suite on real images."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive

from benchmarks import StreamContext
from benchmarks.synthetic import SyntheticStreamConfig, build_synthetic
from runs import checkpoint
from runs.__main__ import main
from runs.config import load_suite
from strategies.clip import ModelConfig, UnitsConfig, build_clip
from strategies.cost import extra_state_of, tensor_bytes
from strategies.registry import METHODS
from strategies.training import LabelSpacePlugin, RecipePlugin, TrainConfig, make_criterion
from strategies.zscl import PRESET_CONFIGS, PRESETS, ZSCL, ReferenceConfig, ZSCLConfig, ZSCLPlugin, maths
from strategies.zscl.reference import read_captions, write_captions

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# ---- maths against hand-computed values ------------------------------------------------------------
def test_distillation_hand_computed_with_temperature_and_t_squared():
    t = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    s = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    temp = 2.0
    # row 0: p = softmax([1, 0]); student log-softmax([0.5, 0.5]) = log(1/2) each
    p0 = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    ce0 = -(p0[0] * math.log(0.5) + p0[1] * math.log(0.5))
    # row 1: p = softmax([0, 2]); student log-softmax([1, 0])
    p1 = [1 / (1 + math.exp(2)), math.exp(2) / (1 + math.exp(2))]
    lse = math.log(math.exp(1) + 1)
    ce1 = -(p1[0] * (1 - lse) + p1[1] * (0 - lse))
    expected = temp**2 * (ce0 + ce1) / 2
    assert float(maths.distillation(t, s, temp)) == pytest.approx(expected, rel=1e-6)


def test_image_and_text_terms_use_teacher_texts_and_transposed_logits():
    gen = torch.Generator().manual_seed(0)
    fs, ft = (F.normalize(torch.randn(3, 4, generator=gen), dim=1) for _ in range(2))
    g = F.normalize(torch.randn(5, 4, generator=gen), dim=1)
    scale, temp = 10.0, 2.0
    zs, zt = scale * fs @ g.t(), scale * ft @ g.t()  # (3, 5)

    def hand(teacher, student):  # rows: T² · mean_i Σ_j −softmax(t/T)_ij log softmax(s/T)_ij
        return temp**2 * (-(F.softmax(teacher / temp, 1) * F.log_softmax(student / temp, 1)).sum(1)).mean()

    image, text = maths.image_text_distillation(fs, ft, g, scale, temp)
    torch.testing.assert_close(image, hand(zt, zs))
    torch.testing.assert_close(text, hand(zt.t(), zs.t()))  # softmax over the 3 images for each of 5 texts
    assert not torch.allclose(image, text)


def test_l2_is_a_sum_not_a_mean():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    anchors = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    assert float(maths.l2_sum(params, anchors)) == 1 + 4 + 4


def test_wise_merge_and_running_mean():
    params, anchors = {"w": torch.tensor([10.0, 0.0])}, {"w": torch.tensor([0.0, 5.0])}
    maths.wise_merge(params, anchors, 0.8)
    torch.testing.assert_close(params["w"], torch.tensor([8.0, 1.0]))
    avg = {"w": torch.tensor([1.0])}
    for n, value in enumerate([3.0, 5.0, 7.0], start=1):
        maths.we_update(avg, {"w": torch.tensor([value])}, n)
    assert float(avg["w"]) == pytest.approx((1 + 3 + 5 + 7) / 4)


def test_virtual_vocabulary_shape_and_determinism_under_the_seed(tiny_model_factory):
    model = tiny_model_factory(kind="full")
    vocab = ZSCLPlugin(teacher="previous", ref_images="current", ref_texts="virtual", image_weight=1.0,
                       seed=3).vocabulary(model)
    tok = model.tokenizer
    assert vocab.shape == (1000, tok.context_length)
    assert (vocab[:, 0] == tok.sot_token_id).all() and (vocab[:, 11] == tok.eot_token_id).all()
    assert (vocab[:, 12:] == 0).all() and (vocab[:, 1:11] < model.clip.vocab_size).all()
    again = ZSCLPlugin(teacher="previous", ref_images="current", ref_texts="virtual", image_weight=1.0,
                       seed=3).vocabulary(model)
    other = ZSCLPlugin(teacher="previous", ref_images="current", ref_texts="virtual", image_weight=1.0,
                       seed=4).vocabulary(model)
    assert torch.equal(vocab, again) and not torch.equal(vocab, other)


def test_herding_picks_the_mean_matching_order():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071]])
    assert maths.herding(f, 2)[0] == 2  # closest to the mean first


# ---- the trainer on a tiny CLIP -------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    cfg = SyntheticStreamConfig(n_classes=6, n_experiences=2, train_per_class=5, test_per_class=2, seed=0)
    return build_synthetic(cfg, StreamContext(".", None, None, 32))


REF_VALUE = 200  # reference images are uniform colour 200 (synthetic stream images are not)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("reference")
    for c in range(2):
        for i in range(3):
            path = root / "images" / f"n0{c}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), REF_VALUE, np.uint8)).save(path, quality=100)
    write_captions(root / "captions.tsv", ["a dog on the grass.", "a red car.", "two cats asleep."])
    return ReferenceConfig(images=str(root / "images"), captions=str(root / "captions.tsv"))


def _model(bench, seed: int = 0):
    torch.manual_seed(seed)
    model, _, _ = build_clip(ModelConfig(arch="clip-tiny", pretrained="none", units=UnitsConfig(kind="full")))
    model.set_class_prompts(bench.class_prompts)
    return model


def _train(iterations: int = 3):
    return TrainConfig(batch_size=4, iterations=iterations, warmup=1, lr=1e-3)


def _build(name, bench, reference, *, extra_plugins=(), iterations=3, **options):
    cfg = PRESET_CONFIGS[name](reference=reference, memory_size=6, virtual_size=20, **options)
    train = _train(iterations)
    return METHODS[name].build(_model(bench), cfg, train=train,
                               plugins=[LabelSpacePlugin(bench), RecipePlugin(train), *extra_plugins],
                               evaluator=None, device="cpu", criterion=make_criterion(train), benchmark=bench,
                               seed=0)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


EXPECTED = {  # the presets as the official scripts set them (docs/methods/zscl.md#fidelity)
    "continual-ft": {},
    "zscl": dict(teacher="pretrained", ref_images="reference", ref_texts="captions", image_weight=1.0,
                 text_weight=1.0, l2=1.0, we_every=100),
    "zscl-cil": dict(teacher="pretrained", ref_images="reference", ref_texts="captions", image_weight=5.0,
                     text_weight=5.0, we_every=10),
    "lwf-clip": dict(teacher="previous", ref_images="current", ref_texts="current", image_weight=1.0, text_weight=1.0),
    "lwf-vr": dict(teacher="previous", ref_images="current", ref_texts="virtual", image_weight=1.0, text_weight=1.0),
    "wise-ft": dict(wise_alpha=0.8),
    "wc": dict(l2=1.0),
    "we": dict(we_every=100),
    "icarl-clip": dict(teacher="pretrained", ref_images="memory", ref_texts="current", image_weight=1.0,
                       text_weight=1.0),
}


def test_presets_are_the_official_values_and_registered():
    base = ZSCLConfig()
    for name, expected in EXPECTED.items():
        cfg = PRESET_CONFIGS[name]()
        assert name in METHODS and METHODS[name].config is PRESET_CONFIGS[name]
        for f in dataclasses.fields(ZSCLConfig):
            want = expected.get(f.name, getattr(base, f.name))
            assert getattr(cfg, f.name) == want, (name, f.name)
    assert set(PRESETS) == set(EXPECTED)
    assert METHODS["zscl"].recipe["iterations"] == 1000 and METHODS["zscl"].recipe["label_smoothing"] == 0.2


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_option_reaches_the_trainer(name, bench, reference):
    """Each option of the preset, and each other option set to a non-default value, arrives in the plugin."""
    strategy = _build(name, bench, reference)
    cfg = PRESET_CONFIGS[name](reference=reference, memory_size=6, virtual_size=20)
    assert isinstance(strategy, ZSCL)
    for f in dataclasses.fields(ZSCLConfig):
        assert getattr(strategy.zscl.cfg, f.name) == getattr(cfg, f.name), f.name
    changed = {"temperature": 3.5, "herding_pool": 77, "virtual_length": 5, "reference_batch_size": 3}
    strategy = _build(name, bench, reference, **changed)
    assert {k: getattr(strategy.zscl.cfg, k) for k in changed} == changed


TERMS = {"continual-ft": set(), "wc": {"l2"}, "we": set(), "wise-ft": set(), "zscl": {"l2", "image", "text"},
         "zscl-cil": {"image", "text"}, "lwf-clip": {"image", "text"}, "lwf-vr": {"image", "text"},
         "icarl-clip": {"image", "text"}}


@pytest.mark.parametrize("name", sorted(TERMS))
def test_each_term_reaches_the_loss_only_where_configured(name, bench, reference):
    strategy = _build(name, bench, reference, iterations=2)
    for experience in bench.scenario.train_stream:
        strategy.train(experience, eval_streams=[])
    assert set(strategy.zscl.last_terms) == TERMS[name]


class _Record(SupervisedPlugin):
    """Trainable weights after every step, after training and at the start of each experience."""

    def __init__(self):
        super().__init__()
        self.steps, self.trained, self.starts = [], [], []

    def before_training_exp(self, strategy, **kwargs):
        self.starts.append(_params(strategy.model))
        self.steps.append([])

    def after_training_iteration(self, strategy, **kwargs):
        self.steps[-1].append(_params(strategy.model))

    def after_training_exp(self, strategy, **kwargs):
        self.trained.append(_params(strategy.model))


def _naive_with(bench, plugin, record, iterations):
    train = _train(iterations)
    model = _model(bench)
    return Naive(model=model, optimizer=torch.optim.AdamW(model.trainable_parameters(), lr=1e-3),
                 criterion=make_criterion(train), train_mb_size=4, device="cpu", evaluator=None, eval_every=-1,
                 plugins=[LabelSpacePlugin(bench), RecipePlugin(train), record, plugin])


def test_we_is_the_running_mean_at_the_stated_iterations_and_the_next_task_starts_from_it(bench):
    """we_every=3, 6 steps: θ_start, θ after steps 0 and 3, and the final θ (the official lr-0 step 6)."""
    record = _Record()
    strategy = _naive_with(bench, ZSCLPlugin(we_every=3), record, iterations=6)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    steps = record.steps[0]
    assert len(steps) == 6
    samples = [record.starts[0], steps[0], steps[3], steps[5]]
    after = _params(strategy.model)
    for name, value in after.items():
        torch.testing.assert_close(value, sum(s[name] for s in samples) / 4, rtol=1e-6, atol=1e-7)
    strategy.train(bench.scenario.train_stream[1], eval_streams=[])
    for name, value in after.items():
        assert torch.equal(record.starts[1][name], value)


def test_wise_is_0_8_trained_plus_0_2_start_and_the_next_task_starts_from_it(bench):
    record = _Record()
    strategy = _naive_with(bench, ZSCLPlugin.from_preset("wise-ft"), record, iterations=3)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    merged = _params(strategy.model)
    for name, value in merged.items():
        torch.testing.assert_close(value, 0.8 * record.trained[0][name] + 0.2 * record.starts[0][name])
    strategy.train(bench.scenario.train_stream[1], eval_streams=[])
    assert all(torch.equal(record.starts[1][n], v) for n, v in merged.items())


def test_the_teacher_never_changes(bench, reference):
    strategy = _build("zscl", bench, reference, iterations=3)
    initial = _params(strategy.model)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    teacher = strategy.zscl.teacher
    strategy.train(bench.scenario.train_stream[1], eval_streams=[])
    assert strategy.zscl.teacher is teacher and not any(p.requires_grad for p in teacher.parameters())
    params = dict(teacher.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in initial.items())
    assert not all(torch.equal(strategy.model.get_parameter(n), v) for n, v in initial.items())


def test_the_reference_loader_reads_the_reference_images_only(bench, reference, monkeypatch):
    seen = []
    original = ZSCLPlugin.distillation_terms

    def spy(self, model, images):
        seen.append(images.clone())
        return original(self, model, images)

    monkeypatch.setattr(ZSCLPlugin, "distillation_terms", spy)
    strategy = _build("zscl", bench, reference, iterations=3)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    assert len(seen) == 3
    from strategies.zscl.plugin import eval_transform
    from strategies.zscl.reference import ImageFolderImages

    expected = ImageFolderImages(reference.images, eval_transform(strategy.model))[0]
    assert all(torch.allclose(x, expected.expand_as(x), atol=1e-5) for batch in seen for x in batch)


def test_reference_text_features_are_computed_once(bench, reference, monkeypatch):
    calls = []
    monkeypatch.setattr("strategies.zscl.plugin.read_captions", lambda path: calls.append(path) or read_captions(path))
    strategy = _build("zscl", bench, reference, iterations=2)
    for experience in bench.scenario.train_stream:
        strategy.train(experience, eval_streams=[])
    assert calls == [reference.captions]


def test_costs_report_every_kind_of_state(bench, reference):
    strategy = _build("zscl", bench, reference, iterations=2)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    weights = tensor_bytes(_params(strategy.model))
    state = extra_state_of(strategy.plugins)
    width = strategy.model.clip.text_projection.shape[1]  # D
    assert state == {"zscl_teacher": tensor_bytes(strategy.zscl.teacher), "zscl_start_weights": weights,
                     "zscl_we_average": weights, "zscl_reference_text_features": 3 * width * 4}
    icarl = _build("icarl-clip", bench, reference, iterations=2)
    for experience in bench.scenario.train_stream:
        icarl.train(experience, eval_streams=[])
    kept = sum(len(ix) for ix in icarl.zscl.memory.values())
    assert kept == 6 and extra_state_of(icarl.plugins)["icarl_memory"] == 6 * 3 * 32 * 32 * 4 + 6 * 8
    assert extra_state_of(_build("continual-ft", bench, reference).plugins) == {}


def test_icarl_memory_follows_the_official_budget(bench, reference):
    strategy = _build("icarl-clip", bench, reference, iterations=2)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    assert strategy.zscl.memory[0].tolist() == list(range(6))  # first task: its first K images
    strategy.train(bench.scenario.train_stream[1], eval_streams=[])
    assert strategy.zscl.memory[0].tolist() == [0, 1, 2] and len(strategy.zscl.memory[1]) == 3  # K//2, K − K//2


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_resume_after_an_experience_gives_the_same_numbers(name, bench, reference):
    stream = bench.scenario.train_stream
    straight = _build(name, bench, reference, iterations=3, **({"we_every": 2} if EXPECTED[name].get("we_every")
                                                                 else {}))
    straight.train(stream[0], eval_streams=[])
    buffer = io.BytesIO()
    torch.save({"model": checkpoint.model_state(straight.model),
                "plugins": checkpoint.plugin_states(straight.plugins, checkpoint.Context(straight, stream))}, buffer)
    torch.manual_seed(11)
    straight.train(stream[1], eval_streams=[])

    resumed = _build(name, bench, reference, iterations=3, **({"we_every": 2} if EXPECTED[name].get("we_every")
                                                                else {}))
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed.model.load_state_dict(state["model"], strict=False)
    checkpoint.load_plugin_states(resumed.plugins, state["plugins"], checkpoint.Context(resumed, stream))
    torch.manual_seed(11)
    resumed.train(stream[1], eval_streams=[])
    a, b = _params(straight.model), _params(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a), name
    assert {int(k): v.tolist() for k, v in straight.zscl.memory.items()} == \
        {int(k): v.tolist() for k, v in resumed.zscl.memory.items()}


# ---- reference data: checked before any work -------------------------------------------------------
def _suite(tmp_path: Path, method: dict) -> Path:
    path = tmp_path / "zscl.yaml"
    path.write_text(yaml.safe_dump({
        "name": "zscltest", "output_dir": str(tmp_path / "out"), "wandb": {"mode": "offline"},
        "defaults": {"model": {"arch": "clip-tiny", "pretrained": "none", "units": {"kind": "full"}},
                     "stream": {"name": "synthetic", "n_classes": 4, "n_experiences": 2, "train_per_class": 4,
                                "test_per_class": 2},
                     "train": {"batch_size": 4, "iterations": 2}, "seeds": [0]},
        "runs": [{"name": "zscl", "method": method}]}))
    return path


@pytest.mark.parametrize("missing", ["images", "captions"])
def test_missing_reference_data_exit_2_naming_file_and_field_nothing_written(tmp_path, reference, capsys, missing):
    paths = {"images": reference.images, "captions": reference.captions, missing: str(tmp_path / "absent")}
    assert main(["run", str(_suite(tmp_path, {"name": "zscl", "reference": paths}))]) == 2
    err = capsys.readouterr().err
    assert f"method.reference.{missing} = '{tmp_path / 'absent'}'" in err
    assert ("ImageNet's training images" if missing == "images" else "Conceptual Captions' validation captions") in err
    assert not (tmp_path / "out").exists()


def test_unset_reference_is_a_configuration_error(tmp_path, capsys):
    assert main(["run", str(_suite(tmp_path, {"name": "zscl"}))]) == 2
    assert "method.reference.images = null" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_suite_with_reference_data_runs(tmp_path, reference):
    from runs.runner import run_suite

    suite = load_suite(_suite(tmp_path, {"name": "zscl", "we_every": 1, "reference": dataclasses.asdict(reference)}))
    (record,) = run_suite(suite).records
    assert len(record["matrix"]) == 2


# ---- the committed stand-in captions and the tiny suite on real images -----------------------------
def test_the_standin_captions_file_is_current():
    from strategies.zscl.reference import standin_captions

    words = ROOT / "runs" / "suites" / "zscl_tiny_captions.tsv"
    rows = words.read_text().splitlines()
    assert all(r.endswith("\tstandin:class-name-template") for r in rows)
    assert read_captions(words) == standin_captions()  # regenerate: write_captions(path, standin_captions())


@pytest.mark.skipif(not (SHARED / "eurosat").is_dir() or not (SHARED / "tiny-imagenet-200").is_dir(),
                    reason=f"{SHARED} subsets not present")
def test_zscl_tiny_suite_runs_end_to_end(tmp_path, monkeypatch):
    from runs.runner import run_suite

    monkeypatch.chdir(ROOT)
    suite = load_suite(ROOT / "runs" / "suites" / "zscl_tiny.yaml",
                       overrides=[f"data_root={SHARED}", "stream.datasets=[EuroSAT, Caltech101]",
                                  "train.iterations=6"])  # WE (every 5) still averages once per task
    suite.output_dir = str(tmp_path)
    records = {r["name"]: r for r in run_suite(suite, only=["zscl", "lwf-vr"]).records}
    for name in ("zscl", "lwf-vr"):
        assert len(records[name]["matrix"]) == 2, name


def test_data_check_of_a_suite_covers_the_reference_data(tmp_path, reference, capsys):
    good = _suite(tmp_path, {"name": "zscl", "reference": {"images": reference.images,
                                                         "captions": reference.captions}})
    assert main(["data", "check", str(good)]) == 0
    assert "== run zscl: the method's own data (method.reference)\n  present" in capsys.readouterr().out
    bad = _suite(tmp_path, {"name": "zscl", "reference": {"images": str(tmp_path / "absent"),
                                                        "captions": reference.captions}})
    assert main(["data", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "missing  method.reference.images" in out and str(tmp_path / "absent") in out


def test_only_a_distilling_preset_with_outside_data_reads_reference_data():
    def reads(name, **options):
        return dataclasses.replace(METHODS[name].config(), **options).reads_reference_data

    assert reads("zscl") and reads("zscl-cil")  # reference images and captions, distilled on
    assert not reads("continual-ft") and not reads("wise-ft")  # no distillation: nothing is read
    assert not reads("zscl", ref_images="current", ref_texts="current")  # the stream's own data
    assert reads("zscl", ref_images="current")  # captions still from reference.captions
    assert not reads("zscl", image_weight=0.0, text_weight=0.0)  # a teacher without a weight distils nothing
