"""RAIL (primal and dual): the closed-form maths against their oracles, the plugin's fit and prediction on a
tiny CLIP, options on their way from YAML to the maths, the dual memory refusal, and resume."""

from __future__ import annotations

import dataclasses
import inspect
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from benchmarks import StreamContext
from benchmarks.synthetic import SyntheticStreamConfig, build_synthetic
from runs import checkpoint
from runs.__main__ import main
from runs.config import load_suite
from strategies.clip import MASKED_LOGIT
from strategies.cost import extra_state_of
from strategies.options import defaults
from strategies.rail import RAIL, RAILConfig, maths
from strategies.rail import plugin as plugin_mod
from strategies.rail.config import embed_dim, kernel_memory_error
from strategies.registry import METHODS
from strategies.training import LabelSpacePlugin, TrainConfig

F64 = torch.float64


# ---- maths ---------------------------------------------------------------------------------------
def _blocks(seed: int = 0, sizes: tuple[int, ...] = (7, 5, 9, 3), width: int = 12, classes: int = 6):
    gen = torch.Generator().manual_seed(seed)
    hs = [torch.randn(n, width, generator=gen, dtype=F64) for n in sizes]
    ys = [F.one_hot(torch.randint(0, classes, (n,), generator=gen), classes).to(F64) for n in sizes]
    return hs, ys


@pytest.mark.parametrize("ridge", [0.1, 1.0])
def test_rls_after_several_experiences_equals_the_joint_ridge_solution(ridge):
    """Absolute memorisation: the recursive solution after every block equals the joint ridge solution
    on all data seen so far (float64 tolerance)."""
    hs, ys = _blocks()
    r, w = maths.rls_init(12, 6, ridge)
    for t, (h, y) in enumerate(zip(hs, ys, strict=True)):
        maths.rls_update(r, w, h, y)
        joint = maths.ridge_solution(torch.cat(hs[: t + 1]), torch.cat(ys[: t + 1]), ridge)
        torch.testing.assert_close(w, joint, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(r, torch.linalg.inv(torch.cat(hs[: t + 1]).t() @ torch.cat(hs[: t + 1])
                                                       + ridge * torch.eye(12, dtype=F64)), rtol=1e-9, atol=1e-10)


def test_projection_is_seeded_and_relu_expands():
    p1, p2 = maths.random_projection(8, 30, seed=3), maths.random_projection(8, 30, seed=3)
    assert torch.equal(p1, p2) and p1.dtype == F64 and p1.shape == (30, 8)
    assert not torch.equal(p1, maths.random_projection(8, 30, seed=4))
    assert p1.abs().max() <= 1 / 8**0.5  # nn.Linear's default U(−1/√D, 1/√D)
    f = torch.randn(4, 8)
    h = maths.expand(f, p1)
    torch.testing.assert_close(h, torch.relu(f.to(F64) @ p1.t()))
    assert (h >= 0).all()


def test_rbf_kernel_and_kernel_ridge_equal_a_direct_solve():
    gen = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(9, 5, generator=gen), dim=1)
    y = F.one_hot(torch.arange(9) % 3, 3).to(F64)
    gamma, lam = 0.7, 0.01
    direct_k = torch.tensor([[float(torch.exp(-gamma * ((a.double() - b.double()) ** 2).sum())) for b in x] for a in x],
                            dtype=F64)
    torch.testing.assert_close(maths.rbf_kernel(x, x, gamma), direct_k, rtol=1e-12, atol=1e-12)
    alpha = maths.kernel_ridge_fit(x, y, lam, gamma)
    torch.testing.assert_close(alpha, torch.linalg.inv(direct_k + lam * torch.eye(9, dtype=F64)) @ y,
                               rtol=1e-8, atol=1e-8)
    q = F.normalize(torch.randn(4, 5, generator=gen), dim=1)
    torch.testing.assert_close(maths.kernel_ridge_scores(q, x, alpha, gamma), maths.rbf_kernel(q, x, gamma) @ alpha)


def test_fusion_on_a_hand_computed_toy():
    """Zero-shot arg-max in a seen class: 0.2·p + 0.8·adapter; in an unseen class: p unchanged."""
    logits = torch.tensor([[torch.log(torch.tensor(3.0)), 0.0, 0.0],  # p = (0.6, 0.2, 0.2): arg-max 0, seen
                           [0.0, 0.0, torch.log(torch.tensor(3.0))]])  # p = (0.2, 0.2, 0.6): arg-max 2, unseen
    adapter = torch.tensor([[0.1, 0.9, 0.0], [1.0, 0.0, 0.0]])
    seen = torch.tensor([True, True, False])
    out = maths.fuse(logits, adapter, seen, weight=0.8)
    expected = torch.tensor([[0.2 * 0.6 + 0.8 * 0.1, 0.2 * 0.2 + 0.8 * 0.9, 0.2 * 0.2],
                             [0.2, 0.2, 0.6]])
    torch.testing.assert_close(out, expected)
    assert out[0].argmax() == 1  # the adapter overrode zero-shot on the seen domain
    masked = torch.tensor([[0.0, MASKED_LOGIT, 1.0]])  # a masked column gets probability 0
    assert maths.fuse(masked, torch.zeros(1, 3), torch.tensor([False, False, True]))[0, 1] == 0


# ---- the plugin on a tiny CLIP -------------------------------------------------------------------
@pytest.fixture
def bench():
    cfg = SyntheticStreamConfig(n_classes=6, n_experiences=3, train_per_class=5, test_per_class=3, seed=0)
    return build_synthetic(cfg, StreamContext(".", None, None, 32))


def _model(tiny_model_factory, bench):
    model = tiny_model_factory(kind="none")
    model.set_class_prompts(bench.class_prompts)
    return model


def _strategy(model, bench, **options):
    return RAIL(model, train_mb_size=4, eval_mb_size=8, device="cpu", evaluator=None, eval_every=-1,
                plugins=[LabelSpacePlugin(bench)], **options)


def _features(model, experiences):
    feats, labels = [], []
    with torch.no_grad():
        model.eval()
        for exp in experiences:
            for x, y, *_ in torch.utils.data.DataLoader(exp.dataset.train(), batch_size=4):  # as the plugin
                feats.append(model.encode_image(x).to(F64))
                labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def test_primal_plugin_fit_equals_the_joint_ridge_on_every_image_seen(tiny_model_factory, bench):
    model = _model(tiny_model_factory, bench)
    strategy = _strategy(model, bench, variant="primal", projection_width=40, ridge=0.1, seed=5)
    stream = bench.scenario.train_stream
    projection = None
    for t in range(2):
        strategy.train(stream[t], eval_streams=[])
        if projection is None:
            projection = strategy.rail.projection.clone()
        assert torch.equal(strategy.rail.projection, projection)  # frozen
    torch.testing.assert_close(projection, maths.random_projection(model.clip.visual.output_dim, 40, seed=5))
    feats, labels = _features(model, [stream[0], stream[1]])
    joint = maths.ridge_solution(maths.expand(feats, projection), F.one_hot(labels, 6).to(F64), 0.1)
    torch.testing.assert_close(strategy.rail.tensors["w"], joint, rtol=1e-7, atol=1e-9)
    assert strategy.rail.seen == sorted(bench.experience_classes[0] + bench.experience_classes[1])
    assert extra_state_of(strategy.plugins) == {"rail_matrices": (40 * 40 + 40 * 6) * 8,
                                                "rail_projection": 40 * feats.shape[1] * 8}
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # nothing trained


def test_dual_plugin_stores_features_and_solves_over_all_of_them(tiny_model_factory, bench):
    model = _model(tiny_model_factory, bench)
    strategy = _strategy(model, bench, variant="dual", gamma=0.5, kernel_ridge=0.01)
    stream = bench.scenario.train_stream
    strategy.train(stream[0], eval_streams=[])
    strategy.train(stream[1], eval_streams=[])
    feats, labels = _features(model, [stream[0], stream[1]])
    torch.testing.assert_close(strategy.rail.tensors["features"], feats)
    torch.testing.assert_close(strategy.rail.tensors["alpha"],
                               maths.kernel_ridge_fit(feats, F.one_hot(labels, 6).to(F64), 0.01, 0.5))
    assert strategy.rail.storage() == sum(t.numel() * t.element_size() for t in strategy.rail.tensors.values())
    n, dim = feats.shape
    assert extra_state_of(strategy.plugins) == {"rail_features": n * dim * 8 + n * 8, "rail_alpha": n * 6 * 8}


def test_evaluation_output_is_the_fusion_masked_to_the_label_space(tiny_model_factory, bench):
    model = _model(tiny_model_factory, bench)
    strategy = _strategy(model, bench, variant="dual")
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    test = bench.scenario.test_stream[1]
    model.set_active_classes(bench.experience_classes[0] + bench.experience_classes[1])
    x = torch.stack([test.dataset[i][0] for i in range(3)])
    with torch.no_grad():
        strategy.is_training, strategy.mb_output = False, None
        out = strategy.rail.deliver(model, x)
        feats = model.encode_image(x)
        logits = model(x)
    seen = torch.zeros(6, dtype=torch.bool)
    seen[bench.experience_classes[0]] = True
    expected = maths.fuse(logits, strategy.rail.adapter_scores(feats).float(), seen, 0.8)
    inactive = torch.ones(6, dtype=torch.bool)
    inactive[model.active_classes] = False
    expected[:, inactive] = MASKED_LOGIT
    torch.testing.assert_close(out, expected)
    kept = SimpleNamespace(model=model, mb_x=x, mb_output=out)
    strategy.rail.after_eval_forward(kept)  # RAIL's forward delivered: the output is kept as it is
    assert kept.mb_output is out
    # on another template: after_eval_forward replaces the plain forward's output the same way
    plain = SimpleNamespace(model=model, mb_x=x, mb_output=logits)
    strategy.rail.after_eval_forward(plain)
    torch.testing.assert_close(plain.mb_output, expected)


# ---- options from the YAML to the maths -----------------------------------------------------------
def test_the_constructor_names_every_option_with_the_config_defaults(tiny_model_factory):
    params = inspect.signature(RAIL.__init__).parameters
    for name, default in defaults(RAILConfig).items():
        assert params[name].default == default, name
    with pytest.raises(TypeError, match="gama"):
        RAIL(tiny_model_factory(kind="none"), gama=0.2)


def _suite(tmp_path: Path, method: dict, stream: dict | None = None) -> Path:
    path = tmp_path / "rail.yaml"
    path.write_text(yaml.safe_dump({
        "name": "railtest", "output_dir": str(tmp_path / "out"), "wandb": {"mode": "offline"},
        "defaults": {"model": {"arch": "clip-tiny", "pretrained": "none", "units": {"kind": "none"}},
                     "stream": stream or {"name": "synthetic", "n_classes": 6, "n_experiences": 2,
                                          "train_per_class": 20, "test_per_class": 2},
                     "train": {"batch_size": 8}, "seeds": [0]},
        "runs": [{"name": "rail", "method": {"name": "rail", **method}}]}))
    return path


@pytest.mark.parametrize("variant", ["primal", "dual"])
def test_yaml_options_reach_the_maths(tmp_path, tiny_model_factory, bench, monkeypatch, variant):
    """λ, γ, the width and the variant travel YAML -> RAILConfig -> RAIL -> RAILPlugin -> maths."""
    method = {"variant": variant, "projection_width": 17, "ridge": 0.37, "gamma": 0.23, "kernel_ridge": 0.0042,
              "fusion_weight": 0.55}
    run = load_suite(_suite(tmp_path, method)).runs[0]
    calls: dict[str, tuple] = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] = (args, kwargs)
            return fn(*args, **kwargs)
        monkeypatch.setattr(plugin_mod, name, wrapped)

    for name in ("rls_init", "kernel_ridge_fit", "kernel_ridge_scores", "fuse"):
        spy(name, getattr(maths, name))
    model = _model(tiny_model_factory, bench)
    strategy = METHODS["rail"].build(model, run.method.cfg, train=TrainConfig(batch_size=4), plugins=[
        LabelSpacePlugin(bench)], evaluator=None, device="cpu", criterion=None, benchmark=bench, seed=0)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    strategy.eval([bench.scenario.test_stream[0]])
    if variant == "primal":
        assert calls["rls_init"][0][0] == 17 and calls["rls_init"][0][2] == 0.37
        assert "kernel_ridge_fit" not in calls
    else:
        assert calls["kernel_ridge_fit"][0][2:] == (0.0042, 0.23) and calls["kernel_ridge_scores"][0][3] == 0.23
        assert "rls_init" not in calls
    assert calls["fuse"][0][3] == 0.55


# ---- the dual variant's memory bound ------------------------------------------------------------
def test_dual_memory_refusal_at_the_stated_size(tmp_path, capsys):
    n, dim, classes = 120, embed_dim("clip-tiny"), 6  # 6 classes × 20 training images
    need = maths.kernel_memory_bytes(n, dim, classes)
    assert need == 16 * n * n + 8 * n * (dim + 2 * classes)
    below, above = (need - 1) / 2**20, (need + 1) / 2**20
    suite = _suite(tmp_path, {"variant": "dual", "max_kernel_memory": below})
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert "method.max_kernel_memory" in err and f"N = {n} stored training features" in err
    assert kernel_memory_error(n, dim, classes, below) in err
    assert not (tmp_path / "out").exists()  # nothing written
    load_suite(_suite(tmp_path, {"variant": "dual", "max_kernel_memory": above}))  # just enough: accepted
    load_suite(_suite(tmp_path, {"variant": "primal", "max_kernel_memory": below}))  # primal stores no kernel
    # the documented way through: a per-class subsample (3 of 20 per class: N = 18)
    load_suite(_suite(tmp_path, {"variant": "dual", "max_kernel_memory": below, "kernel_shots": 3}))


def test_plugin_refuses_before_any_work_outside_the_runner(tiny_model_factory, bench):
    model = _model(tiny_model_factory, bench)
    strategy = _strategy(model, bench, variant="dual", max_kernel_memory=1e-3)
    with pytest.raises(ValueError, match="method.max_kernel_memory = 0.001 MiB.*N = 30 stored"):
        strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    assert strategy.rail.tensors == {}


def test_kernel_shots_keeps_at_most_k_images_per_class(tiny_model_factory, bench):
    model = _model(tiny_model_factory, bench)
    strategy = _strategy(model, bench, variant="dual", kernel_shots=2, seed=1)
    strategy.train(bench.scenario.train_stream[0], eval_streams=[])
    labels = strategy.rail.tensors["labels"]
    assert torch.bincount(labels, minlength=6)[bench.experience_classes[0]].tolist() == [2, 2]


# ---- resume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["primal", "dual"])
def test_resume_after_an_experience_gives_identical_numbers(tiny_model_factory, bench, variant):
    options = {"variant": variant, "projection_width": 30}
    stream, test = bench.scenario.train_stream, bench.scenario.test_stream
    straight = _strategy(_model(tiny_model_factory, bench), bench, **options)
    straight.train(stream[0], eval_streams=[])
    ctx = checkpoint.Context(straight, stream)
    buffer = io.BytesIO()
    torch.save(checkpoint.plugin_states(straight.plugins, ctx), buffer)
    straight.train(stream[1], eval_streams=[])

    resumed = _strategy(_model(tiny_model_factory, bench), bench, **options)
    buffer.seek(0)
    states = torch.load(buffer, weights_only=True)
    checkpoint.load_plugin_states(resumed.plugins, states, checkpoint.Context(resumed, stream))
    resumed.train(stream[1], eval_streams=[])
    for name, tensor in straight.rail.tensors.items():
        assert torch.equal(resumed.rail.tensors[name], tensor), name
    assert resumed.rail.seen == straight.rail.seen
    x = torch.stack([test[1].dataset[i][0] for i in range(3)])
    for s in (straight, resumed):
        s.model.set_active_classes(bench.experience_classes[1])
    with torch.no_grad():
        assert torch.equal(straight.rail.deliver(straight.model, x), resumed.rail.deliver(resumed.model, x))


def test_config_fields_have_help_and_the_paper_defaults():
    cfg = RAILConfig()
    assert (cfg.variant, cfg.projection_width, cfg.ridge, cfg.gamma, cfg.kernel_ridge, cfg.fusion_weight) == (
        "dual", 15000, 0.1, 0.1, 0.001, 0.8)
    assert all(f.metadata.get("help") for f in dataclasses.fields(RAILConfig))


# ---- end to end on real images ----------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "eurosat").is_dir(), reason=f"{SHARED}/eurosat not present")
def test_rail_tiny_suite_runs_end_to_end_through_the_runner(tmp_path):
    from runs.runner import run_suite

    suite = load_suite(ROOT / "runs" / "suites" / "rail_tiny.yaml",
                       overrides=[f"data_root={SHARED}", "stream.datasets=[EuroSAT]"])
    suite.output_dir = str(tmp_path)
    records = {r["name"]: r for r in run_suite(suite, only=["rail-dual", "rail-primal"]).records}
    for name in ("rail-dual", "rail-primal"):
        matrix = records[name]["matrix"]
        assert len(matrix) == 1 and 0.0 <= matrix[0][0] <= 1.0, name
        config = yaml.safe_load((tmp_path / "rail_tiny" / f"{name}-seed0" / "config.yaml").read_text())
        assert config["method"]["variant"] == name.removeprefix("rail-")
    assert (tmp_path / "rail_tiny" / "results.md").exists()
