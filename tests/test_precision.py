"""Mixed precision: ``train.precision`` (compute, autocast in the model) and ``model.precision`` (storage of
the frozen backbone), fp32 master weights, fp16 loss scaling, and bf16 end to end for every method."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runs.config import ConfigError, load_suite
from runs.runner import RunSession, check_machine, run_suite
from strategies.clip import ModelConfig, UnitsConfig, build_clip
from strategies.clip.precision import autocast, autocast_dtype, set_tf32, tf32_switches
from strategies.registry import METHODS
from strategies.training import GradScalerPlugin

PROMPTS = [["a photo of a cat."], ["a photo of a dog.", "a dog."], ["a car."]]


def _model(kind: str = "adapter", storage: str = "fp32", device: str = "cpu", **units):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="clip-tiny", pretrained="none", precision=storage,
                      units=UnitsConfig(kind=kind, dropout=0.0, **units))
    model, _, _ = build_clip(cfg, device)
    model.set_class_prompts(PROMPTS)
    return model


def _images(model, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(model.device)


def _frozen_bytes(model) -> int:
    """Bytes of the frozen backbone's tensors (scalars such as logit_scale stay float32 and are left out)."""
    params = [p for p in model.clip.parameters() if not p.requires_grad]
    return sum(t.numel() * t.element_size() for t in [*params, *model.clip.buffers()] if t.dim() > 0)


def _linear_dtypes(model, images: torch.Tensor) -> dict[str, torch.dtype]:
    """Output dtype of one MLP linear per tower during a plain forward (hooks on the backbone)."""
    seen: dict[str, torch.dtype] = {}
    blocks = {"vision": model.clip.visual.transformer.resblocks[0], "language": model.clip.transformer.resblocks[0]}
    def hook(name: str):
        def record(module, inputs, output) -> None:  # returns None: the output is left as it is
            seen.setdefault(name, output.dtype)

        return record

    handles = [block.mlp.c_fc.register_forward_hook(hook(name)) for name, block in blocks.items()]
    try:
        model.invalidate_text_cache()
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return seen


# ---- the precision module -------------------------------------------------------------------------
def test_autocast_dtypes_and_contexts():
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("fp32") is None and autocast_dtype("tf32") is None
    with pytest.raises(ValueError, match=re.escape("allowed: fp32 | tf32 | bf16 | fp16")):
        autocast_dtype("amp")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32),
                             ("tf32", torch.float32)):
        with autocast(precision, "cpu"):
            assert (a @ b).dtype is dtype, precision


def test_set_tf32_is_process_wide_and_precision_scope_restores_it(tiny_model_factory):
    before = tf32_switches()
    try:
        model = tiny_model_factory()
        model.set_precision("tf32")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        with model.precision_scope("fp32"):
            assert model.precision == "fp32" and not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
        assert model.precision == "tf32" and tf32_switches() == (True, True, "high")
        model.set_precision("fp32")
        assert tf32_switches() == (False, False, "highest")
    finally:
        set_tf32(False)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[0], before[1]
        torch.set_float32_matmul_precision(before[2])


# ---- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["adapter", "moe", "lora"])
def test_bf16_autocast_is_active_inside_the_forward_and_features_are_float32(kind):
    model = _model(kind)
    images = _images(model)
    assert model.precision == "fp32"
    assert _linear_dtypes(model, images) == {"vision": torch.float32, "language": torch.float32}
    reference = model(images)
    model.set_precision("bf16")
    assert _linear_dtypes(model, images) == {"vision": torch.bfloat16, "language": torch.bfloat16}
    logits = model(images)
    assert logits.dtype is torch.float32 and model.encode_image(images).dtype is torch.float32
    assert model.text_features().dtype is torch.float32
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, reference, atol=0.1, rtol=0.05)  # bf16: ~3 significant digits
    with model.precision_scope("fp32"):
        assert _linear_dtypes(model, images)["vision"] is torch.float32
        torch.testing.assert_close(model(images), reference)  # the fp32 cache entry is not the bf16 one
    assert model.precision == "bf16"


@pytest.mark.parametrize("storage", ["fp32", "bf16"])
def test_bf16_training_step_keeps_fp32_master_weights_and_grads(storage):
    model = _model("moe", storage=storage)
    model.set_precision("bf16")
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = F.cross_entropy(model(_images(model)), torch.tensor([0, 1, 2, 0], device=model.device))
    assert loss.dtype is torch.float32
    loss.backward()
    optimizer.step()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        assert p.dtype is torch.float32, name
        assert p.grad is not None and p.grad.dtype is torch.float32, name
    assert any(not torch.equal(before[n], p) for n, p in trainable)


def test_bf16_storage_halves_the_frozen_backbone_and_keeps_units_and_scalars_fp32():
    full, half = _model("adapter"), _model("adapter", storage="bf16")
    assert half.storage_precision == "bf16" and half.precision == "bf16"  # a bf16 backbone computes in bf16
    assert _frozen_bytes(half) * 2 == _frozen_bytes(full)
    for p in half.trainable_parameters():
        assert p.dtype is torch.float32
    assert half.clip.logit_scale.dtype is torch.float32  # CLIP's temperature is not rounded
    assert half.clip.visual.conv1.weight.dtype is torch.bfloat16
    images = _images(full)
    torch.testing.assert_close(half(images), full(images), atol=0.15, rtol=0.05)


def test_low_storage_needs_autocast_of_its_dtype():
    model = _model("adapter", storage="bf16")
    for compute in ("fp32", "tf32", "fp16"):
        with pytest.raises(ValueError, match="model.precision=bf16 .* needs train.precision bf16"):
            model.set_precision(compute)
    assert model.precision == "bf16"


@pytest.mark.parametrize("value", ["amp", "pure_bf16", "pure_fp16"])
def test_open_clip_mixed_precision_names_are_refused_for_model_precision(value):
    with pytest.raises(ValueError, match=re.escape("allowed: fp32 | bf16 | fp16 (mixed precision is train.precision)")):
        build_clip(ModelConfig(arch="clip-tiny", pretrained="none", precision=value))


# ---- fp16 and the gradient scaler -----------------------------------------------------------------
class _Strategy(SimpleNamespace):
    """What GradScalerPlugin reads: the loss and the optimizer."""


def _scaler_step(model, optimizer, plugin, poison: bool):
    strategy = _Strategy(loss=None, optimizer=optimizer)
    optimizer.zero_grad()
    strategy.loss = F.cross_entropy(model(_images(model)), torch.tensor([0, 1, 2, 0], device=model.device))
    unscaled = strategy.loss.detach().clone()
    plugin.before_backward(strategy)
    strategy.loss.backward()
    plugin.after_backward(strategy)
    assert torch.equal(strategy.loss.detach(), unscaled)  # loggers and guards read the true loss
    if poison:  # a hand-crafted fp16 overflow
        next(p for p in model.trainable_parameters()).grad.view(-1)[0] = float("inf")
    plugin.before_update(strategy)
    optimizer.step()
    plugin.after_update(strategy)


def test_fp16_scaler_skips_a_step_with_inf_grads_and_not_otherwise():
    model = _model("adapter")
    model.set_precision("fp16")
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    plugin = GradScalerPlugin(model.device, init_scale=2.0**10)
    params = model.trainable_parameters()

    before = [p.detach().clone() for p in params]
    _scaler_step(model, optimizer, plugin, poison=True)
    assert all(torch.equal(b, p) for b, p in zip(before, params, strict=True))  # skipped: nothing moved
    assert plugin.skipped_steps == 1 and plugin.scaler.get_scale() == 2.0**9  # the scale backs off
    assert all(p.grad is not None and not p.grad.any() for p in params)  # zero grads for later readers

    _scaler_step(model, optimizer, plugin, poison=False)
    assert plugin.skipped_steps == 1 and plugin.scaler.get_scale() == 2.0**9
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    for p in params:
        assert p.dtype is torch.float32 and torch.isfinite(p).all()


def test_fp16_scaler_gradients_are_the_unscaled_ones():
    model = _model("adapter")
    model.set_precision("fp16")
    images, targets = _images(model), torch.tensor([0, 1, 2, 0], device=model.device)
    params = model.trainable_parameters()
    F.cross_entropy(model(images), targets).backward()
    plain = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    plugin = GradScalerPlugin(model.device, init_scale=2.0**8)
    strategy = _Strategy(loss=F.cross_entropy(model(images), targets), optimizer=torch.optim.SGD(params, lr=0.0))
    plugin.before_backward(strategy)
    strategy.loss.backward()
    plugin.after_backward(strategy)
    plugin.before_update(strategy)
    for p, g in zip(params, plain, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_scaler_state_round_trips_through_the_checkpoint_protocol():
    plugin = GradScalerPlugin("cpu", init_scale=2.0**7)
    state = plugin.state_dict()
    assert state["scaler"]["scale"] == 2.0**7
    other = GradScalerPlugin("cpu")
    other.load_state_dict(json.loads(json.dumps(state)))  # plain values only
    assert other.scaler.get_scale() == 2.0**7


# ---- the suite ------------------------------------------------------------------------------------
def _suite_text(methods: list[str], train: str = "precision: bf16", model: str = "") -> str:
    runs = []
    for name in methods:
        if name == "condu":
            runs.append("  - {method: condu, model: {units: {kind: lora, lora_rank: 4}}, "
                        "train: {iterations: 3, warmup: 1, lr: 0.01, augment: false, batch_size: 8}}")
        elif name == "mozo":
            runs.append("  - {method: mozo, train: {batch_size: 8, lr: 0.01, warmup: 1}}")
        elif _external_reference(name):  # ZSCL's reference data is not here: the stream's own images and texts
            runs.append(f"  - {{method: {{name: {name}, ref_images: current, ref_texts: current}}}}")
        else:
            runs.append(f"  - method: {name}")
    return f"""name: prec
output_dir: outputs
defaults:
  model: {{arch: clip-tiny, pretrained: none, units: {{kind: moe, bottleneck: 8, dropout: 0.0}}{model}}}
  stream: {{name: synthetic, n_classes: 4, n_experiences: 2, train_per_class: 8, test_per_class: 4}}
  train: {{epochs: 1, iterations: 2, batch_size: 8, lr: 0.01, warmup: 1, device: cpu, {train}}}  # iterations: the
  # ZSCL recipe counts 1000 per task; 2 is one pass over the 16 training images of an experience
  eval: {{zero_shot_row: false}}
  data_root: .
runs:
""" + "\n".join(runs) + "\n"


def _external_reference(name: str) -> bool:
    """Does the method read reference data from outside the stream by default (ZSCL, ZSCL-CIL)?"""
    return getattr(METHODS[name].config(), "reads_reference_data", False)


def _load(tmp_path: Path, text: str, overrides=()):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    suite = load_suite(path, overrides=list(overrides))
    suite.output_dir = str(tmp_path / "outputs")
    return suite


def test_bf16_end_to_end_for_every_registered_method(tmp_path):
    methods = sorted(METHODS)
    assert {"zeroshot", "naive", "lwf", "ewc", "replay", "si", "agem", "mozo", "condu"} <= set(methods)
    suite = _load(tmp_path, _suite_text(methods))
    start = time.perf_counter()
    outcome = run_suite(suite)
    seconds = time.perf_counter() - start
    assert not outcome.failed, outcome.failed
    assert sorted(r["name"] for r in outcome.records) == methods
    for record in outcome.records:
        matrix = np.asarray(record["matrix"], dtype=float)
        assert matrix.shape == (2, 2) and np.isfinite(matrix).all(), record["name"]
        assert all(v is None or math.isfinite(v) for v in record["metrics"].values()), record["name"]
        meta = json.loads((suite.dir / f"{record['name']}-seed0" / "fingerprint.json").read_text())
        assert meta["machine"] == {"device_type": "cpu", "precision": "bf16"}, record["name"]
    print(f"bf16 end to end: {len(methods)} methods in {seconds:.0f} s")  # a figure, not a timed assertion


@pytest.mark.parametrize(("declared", "resolved"), [("bf16", "bf16"), ("auto", None), ("fp16", "fp16")])
def test_train_precision_reaches_the_model_of_the_built_strategy(tmp_path, declared, resolved):
    suite = _load(tmp_path, _suite_text(["naive"], train=f"precision: {declared}", model="").replace(
        "device: cpu, ", ""))  # train.device auto: the model may be on CUDA
    run = suite.runs[0]
    session = RunSession(suite, run, 0)
    session.out.mkdir(parents=True)
    session.build()
    try:
        expected = resolved or ("bf16" if session.device.type == "cuda" else "fp32")
        model = session.strategy.model
        assert session.precision == expected and model.precision == expected
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(expected, torch.float32)
        assert _linear_dtypes(model, _images(model)) == {"vision": dtype, "language": dtype}
        scalers = [p for p in session.strategy.plugins if isinstance(p, GradScalerPlugin)]
        assert len(scalers) == (expected == "fp16")
        if scalers:
            assert session.strategy.plugins[-1] is scalers[0]  # last: it scales the complete loss
    finally:
        session._close(exit_code=0, status="test")


class _Interrupt(KeyboardInterrupt):
    pass


def test_fp16_run_with_the_scaler_resumes_with_identical_numbers(tmp_path, monkeypatch):
    suite = _load(tmp_path, _suite_text(["lwf"], train="precision: fp16"))
    run = suite.runs[0]
    reference = RunSession(suite, run, 0).execute()
    assert np.isfinite(np.asarray(reference["matrix"], dtype=float)).all()
    meta = json.loads((suite.dir / "lwf-seed0" / "fingerprint.json").read_text())
    assert meta["machine"]["precision"] == "fp16"
    suite.output_dir = str(tmp_path / "resumed")
    original, saved = RunSession._save_checkpoint, []

    def save_then_crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        saved.append(torch.load(self.out / "checkpoint.pt", weights_only=True))
        raise _Interrupt("after experience 0")

    monkeypatch.setattr(RunSession, "_save_checkpoint", save_then_crash)
    with pytest.raises(_Interrupt):
        RunSession(suite, run, 0).execute()
    monkeypatch.setattr(RunSession, "_save_checkpoint", original)
    (scaler,) = [v for k, v in saved[0]["plugins"].items() if k.endswith(":GradScalerPlugin")]
    assert scaler["scaler"]["scale"] > 0
    resumed = RunSession(suite, run, 0).execute()
    np.testing.assert_allclose(resumed["matrix"], reference["matrix"], atol=1e-6)


def test_model_precision_amp_is_refused_naming_file_field_and_values(tmp_path):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, _suite_text(["naive"], model=", precision: amp"))
    message = str(error.value)
    assert "suite.yaml: runs[0].model.precision = 'amp': allowed values: fp32 | bf16 | fp16" in message
    assert "mixed precision is train.precision: auto | fp32 | tf32 | bf16 | fp16" in message


def test_train_precision_value_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"runs\[0\].train.precision = 'fp8': allowed values: auto, fp32, tf32"):
        _load(tmp_path, _suite_text(["naive"], train="precision: fp8"))


def test_low_storage_with_fp32_compute_is_a_config_error_and_auto_is_checked_at_run_start(tmp_path):
    with pytest.raises(ConfigError, match=r"runs\[0\].train.precision = 'fp32': model.precision=bf16"):
        _load(tmp_path, _suite_text(["naive"], train="precision: fp32", model=", precision: bf16"))
    suite = _load(tmp_path, _suite_text(["naive"], train="precision: auto", model=", precision: bf16"))
    problems = check_machine(suite.runs[0])  # auto is fp32 on this CPU: refused before any work
    assert len(problems) == 1 and "train.precision='auto' resolves to fp32 on cpu" in problems[0]
    assert "set train.precision to bf16" in problems[0]


def test_bf16_storage_run_finishes(tmp_path):
    suite = _load(tmp_path, _suite_text(["naive"], model=", precision: bf16"))
    outcome = run_suite(suite)
    assert not outcome.failed, outcome.failed
    assert np.isfinite(np.asarray(outcome.records[0]["matrix"], dtype=float)).all()


# ---- CUDA ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["moe", "lora"])
def test_bf16_on_cuda_autocast_step_and_storage(kind):
    model = _model(kind, storage="bf16", device="cuda")
    model.train()
    images = _images(model)
    assert _linear_dtypes(model, images) == {"vision": torch.bfloat16, "language": torch.bfloat16}
    loss = F.cross_entropy(model(images), torch.tensor([0, 1, 2, 0], device="cuda"))
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.trainable_parameters():
        assert p.dtype is torch.float32 and p.grad is not None and p.grad.dtype is torch.float32
    full = _model(kind, device="cuda")
    assert _frozen_bytes(model) * 2 == _frozen_bytes(full)
