"""``train.compile``: the towers are compiled in place (state-dict keys unchanged, the classifier's methods
plain Python); logits and unit gradients equal the eager ones. CI uses the cheap ``aot_eager`` backend
(inductor compiles for 40-100 s on 2 CPU cores, docs/speed.md, "Compiling the towers")."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from runs.config import load_suite
from runs.runner import RunSession
from strategies.clip import CLIPClassifier, ModelConfig, UnitsConfig, build_clip

ROOT = Path(__file__).resolve().parents[1]


def _model(kind: str):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="clip-tiny", pretrained="none", units=UnitsConfig(kind=kind, dropout=0.0))
    model, _, _ = build_clip(cfg)
    model.set_class_prompts([["a photo of a cat."], ["a photo of a dog.", "a dog."], ["a car."]])
    with torch.no_grad():  # units off the identity, so that their gradients are not trivial
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model


def _step(model, images, targets):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    logits = model(images)
    F.cross_entropy(logits, targets).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["moe"])
def test_compiled_towers_give_the_eager_logits_and_gradients(kind):
    eager, compiled = _model(kind), _model(kind)
    keys = list(compiled.state_dict())
    compiled.compile_towers(backend="aot_eager")
    assert list(compiled.state_dict()) == keys  # in place: checkpoints and unit indexes are unchanged
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(compiled.device)
    targets = torch.tensor([0, 1, 2, 0], device=compiled.device)
    for mode in ("train", "eval"):
        eager.train(mode == "train")
        compiled.train(mode == "train")
        logits, grads = _step(eager, images, targets)
        logits_c, grads_c = _step(compiled, images, targets)
        torch.testing.assert_close(logits_c, logits, rtol=1e-4, atol=1e-5)
        assert set(grads_c) == set(grads) and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grads_c[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # LwF keeps a deep copy of the model: the copy must run its own weights, not the original's
    previous = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in previous.trainable_parameters():
            p.zero_()
        previous.invalidate_text_cache()
        assert not torch.allclose(previous(images), compiled(images))


def test_train_compile_reaches_the_model_and_a_compiled_run_trains(tmp_path, monkeypatch):
    calls = []
    original = CLIPClassifier.compile_towers

    def cheap(self, **options):  # the runner's call, with the cheap backend
        calls.append(options)
        original(self, backend="aot_eager")

    monkeypatch.setattr(CLIPClassifier, "compile_towers", cheap)
    overrides = ["stream.n_classes=4", "stream.n_experiences=2", "stream.train_per_class=8", "train.epochs=1",
                 "train.compile=true"]
    suite = load_suite(ROOT / "runs" / "suites" / "smoke.yaml", overrides=overrides, only=["lwf"])
    suite.output_dir = str(tmp_path)
    record = RunSession(suite, next(r for r in suite.runs if r.name == "lwf"), 0).execute()
    assert calls == [{}]  # compiled once, with torch.compile's defaults (inductor)
    assert all(0 <= v <= 1 for row in record["matrix"] for v in row)


@pytest.mark.slow  # a second compilation; a compiled run's training is checked above in the default set
def test_bench_compile_rows_report_the_first_step(monkeypatch):
    from runs.bench import format_mozo_table, measure

    original = CLIPClassifier.compile_towers
    monkeypatch.setattr(CLIPClassifier, "compile_towers", lambda self, **o: original(self, backend="aot_eager"))
    plain = measure("full FO", steps=1, warmup=1)
    compiled = measure("full FO", steps=1, warmup=1, compile=True)
    assert compiled.compiled and not plain.compiled and compiled.label == "full FO + compile"
    assert compiled.first_step_ms > 0 and compiled.fo_params == plain.fo_params
    table = format_mozo_table([plain, compiled], "header")
    assert "| full FO + compile |" in table and "First step of the compiled rows" in table
    assert "full FO + compile " + f"{compiled.first_step_ms / 1000:.1f} s" in table
