"""``train.grad_checkpointing``: open_clip's non-reentrant per-block checkpointing gives the units inside the
frozen towers the gradients of the plain backward; the reentrant variant would give them none."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from runs.bench import bench_mozo, measure
from runs.config import load_suite
from runs.runner import RunSession
from strategies.clip import ModelConfig, UnitsConfig, build_clip

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [["a photo of a cat."], ["a photo of a dog.", "a dog."], ["a car."]]


def _model(kind: str, **units):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="clip-tiny", pretrained="none", units=UnitsConfig(kind=kind, dropout=0.0, **units))
    model, _, _ = build_clip(cfg)
    model.set_class_prompts(PROMPTS)
    if kind != "full":  # units start as the identity (zero up-projections): move them so gradients flow everywhere
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.train()
    return model


def _grads(model, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # router noise draws the same values in both runs
    F.cross_entropy(model(images), targets).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _calls(block) -> list[int]:
    """Calls of ``block`` (a pre-hook: the recomputation stops early, once it has what backward needs)."""
    count = [0]
    block.register_forward_pre_hook(lambda *args: count.__setitem__(0, count[0] + 1))
    return count


@pytest.mark.parametrize(("kind", "precision"), [("adapter", "fp32"), ("moe", "fp32"), ("lora", "fp32"),
                                                 ("full", "fp32"), ("moe", "bf16")])
def test_checkpointed_gradients_equal_the_plain_ones_in_both_towers(kind, precision):
    model = _model(kind)
    model.set_precision(precision)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(model.device)
    targets = torch.tensor([0, 1, 2, 0], device=model.device)
    plain = _grads(model, images, targets)
    vision = _calls(model.clip.visual.transformer.resblocks[-1])
    text = _calls(model.clip.transformer.resblocks[-1])
    model.set_grad_checkpointing(True)
    assert model.clip.visual.transformer.grad_checkpointing and model.clip.transformer.grad_checkpointing
    checkpointed = _grads(model, images, targets)
    assert vision[0] == 2 and text[0] == 2  # forward + recomputation in backward: checkpointing is on
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(plain) == set(checkpointed) == trainable  # every unit of both towers has a gradient
    assert any(n.startswith("clip.visual.") for n in plain) and any(n.startswith("clip.transformer.") for n in plain)
    for name, grad in plain.items():
        assert grad.abs().sum() > 0 or kind == "full", name
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_reentrant_checkpointing_would_leave_the_units_without_gradients():
    """Why open_clip's non-reentrant path is the one to use with a frozen backbone: the input of a block
    does not require gradients, so the reentrant variant records no graph through the block."""
    model = _model("adapter")
    block = model.clip.visual.transformer.resblocks[0]
    x = torch.randn(2, 17, 64)  # (B, T, D), the frozen embeddings below the block: no grad
    unit = block.mlp.unit
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        out = checkpoint(block, x, use_reentrant=True)
    assert not out.requires_grad  # nothing to backpropagate into the unit
    out = checkpoint(block, x, use_reentrant=False)
    out.sum().backward()
    assert all(p.grad is not None for p in unit.parameters())


def test_train_grad_checkpointing_reaches_the_model(tmp_path):
    overrides = ["stream.n_classes=4", "stream.n_experiences=2", "stream.train_per_class=8", "train.epochs=1",
                 "train.grad_checkpointing=true"]
    suite = load_suite(ROOT / "runs" / "suites" / "smoke.yaml", overrides=overrides, only=["naive"])
    suite.output_dir = str(tmp_path)
    session = RunSession(suite, next(r for r in suite.runs if r.name == "naive"), 0)
    session.out.mkdir(parents=True)
    session.build()
    try:
        assert session.model.grad_checkpointing and session.model.clip.visual.transformer.grad_checkpointing
        session.strategy.train(session.benchmark.scenario.train_stream[0], eval_streams=[])
        assert all(p.grad is not None for p in session.model.trainable_parameters())
    finally:
        session._close(exit_code=0, status="test")


@pytest.mark.slow  # three fresh processes; the in-process switch is test_bench_measure_switches_checkpointing_on
def test_bench_mozo_grad_checkpointing_rows_from_fresh_processes():
    table = bench_mozo(arch="clip-tiny", steps=1, warmup=1, device="cpu", configs=("inference", "full FO"),
                       grad_checkpointing=True)
    assert "a fresh process per configuration" in table
    labels = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert labels == ["inference", "full FO", "full FO + grad ckpt"]  # inference has no backward: once
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["full FO"].split("|")[7] == rows["full FO + grad ckpt"].split("|")[7]  # same FO / ZO split


def test_bench_measure_switches_checkpointing_on():
    plain = measure("full FO", steps=1, warmup=0)
    checkpointed = measure("full FO", steps=1, warmup=0, grad_checkpointing=True)
    assert not plain.grad_checkpointing and checkpointed.grad_checkpointing
    assert checkpointed.label == "full FO + grad ckpt" and checkpointed.fo_params == plain.fo_params
