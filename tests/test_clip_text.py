"""The text tower at the prompts' real length equals open_clip's padded ``encode_text`` (issue 14, item 2).

Equality is checked per prompt as ``‖f_cut − f_full‖ / ‖f_full‖ ≤ 1e-5`` (fp32): the two runs
multiply matrices of different shapes, so single near-zero coordinates can differ by more than an
element-wise 1e-5 while the feature vector agrees to ~1e-7.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from strategies.clip import ModelConfig, UnitsConfig, build_clip
from strategies.clip.model import register_model_configs
from strategies.clip.text import can_cut, encode_text, prompt_length
from strategies.clip.units import inject_units

PROMPTS = ["a photo of a cat.", "a dog.", "a blurry photo of a large airplane.", "art of a red fox."]
# SOT + "a blurry photo of a large airplane ." (8 BPE tokens) + EOT: the longest EOT is at index 9
LONGEST = 10
CONFIGS = Path(__file__).resolve().parents[1] / "strategies" / "clip" / "model_configs"


def _tokens(clip) -> torch.Tensor:
    return open_clip.tokenize(PROMPTS, context_length=clip.context_length)


def _relative_error(cut: torch.Tensor, full: torch.Tensor) -> float:
    return float(((cut - full).norm(dim=-1) / full.norm(dim=-1)).max())


def _perturb_units(model) -> None:
    """Make every unit non-identity, so a path that skipped them would differ."""
    with torch.no_grad():
        for unit in model.units.values():
            for p in unit.parameters():
                p.add_(0.3 * torch.randn_like(p))


def _tiny_clip(arch: str = "clip-tiny", **text_overrides) -> open_clip.CLIP:
    cfg = json.loads((CONFIGS / f"{arch}.json").read_text())
    cfg["text_cfg"].update(text_overrides)
    torch.manual_seed(0)
    return open_clip.CLIP(**cfg).eval()


def test_prompt_length_is_the_longest_prompts_end_of_text():
    clip = _tiny_clip()
    tokens = _tokens(clip)
    assert tokens.shape[1] == 32
    assert prompt_length(clip, tokens) == LONGEST
    assert prompt_length(clip, tokens[:2]) == 8  # SOT a photo of a cat . EOT


@pytest.mark.parametrize("arch", ["clip-tiny", "clip-tiny-12l"])
@pytest.mark.parametrize("kind", ["none", "moe", "lora", "full"])
def test_cut_tower_equals_open_clip_encode_text(arch, kind):
    torch.manual_seed(0)
    units = UnitsConfig(kind=kind, branches=["language"], bottleneck=8, lora_rank=4)
    model, _, _ = build_clip(ModelConfig(arch=arch, pretrained="none", units=units))
    _perturb_units(model)
    model.eval()
    tokens = model.tokenizer(PROMPTS)
    with torch.no_grad():
        full = model.clip.encode_text(tokens)
        cut = encode_text(model.clip, tokens)
    assert can_cut(model.clip) and prompt_length(model.clip, tokens) == LONGEST < tokens.shape[1]
    assert _relative_error(cut, full) <= 1e-5


@pytest.mark.parametrize("kind", ["moe", "lora"])
def test_units_still_apply_on_the_cut_tower(kind):
    torch.manual_seed(0)
    units = UnitsConfig(kind=kind, branches=["language"], bottleneck=8, lora_rank=4, dropout=0.0)
    model, _, _ = build_clip(ModelConfig(arch="clip-tiny", pretrained="none", units=units))
    model.eval()
    tokens = model.tokenizer(PROMPTS)
    with torch.no_grad():
        before = encode_text(model.clip, tokens)
        _perturb_units(model)
        after = encode_text(model.clip, tokens)
    assert _relative_error(after, before) > 1e-2


def test_cut_tower_gives_the_same_gradients():
    torch.manual_seed(0)
    model, _, _ = build_clip(ModelConfig(arch="clip-tiny", pretrained="none", units=UnitsConfig(kind="full")))
    model.eval()
    tokens = model.tokenizer(PROMPTS)
    weights = torch.randn(len(PROMPTS), model.clip.text_projection.shape[1])
    grads = []
    for encode in (lambda: model.clip.encode_text(tokens), lambda: encode_text(model.clip, tokens)):
        model.zero_grad(set_to_none=True)
        (encode() * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    full, cut = grads
    assert full.keys() == cut.keys() and "clip.positional_embedding" in full
    for name in full:
        scale = full[name].abs().max().clamp_min(1e-12)
        assert float((cut[name] - full[name]).abs().max() / scale) <= 1e-5, name
    assert float(full["clip.positional_embedding"][LONGEST:].abs().max()) == 0.0  # why cutting is exact


def test_vit_b_16_random_init_cut_equals_full():
    register_model_configs()
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None)
    inject_units(clip, UnitsConfig(kind="adapter", branches=["language"], bottleneck=8))
    clip.eval()
    for block in clip.transformer.resblocks:  # adapters non-identity
        torch.nn.init.normal_(block.mlp.unit.up.weight, std=0.5)
    tokens = open_clip.get_tokenizer("ViT-B-16")(PROMPTS[:3])
    with torch.no_grad():
        full = clip.encode_text(tokens)
        cut = encode_text(clip, tokens)
    assert prompt_length(clip, tokens) == LONGEST
    assert _relative_error(cut, full) <= 1e-5


def test_eos_pooling_is_cut_at_the_first_eos():
    eot = int(open_clip.tokenize(["a"]).max())
    clip = _tiny_clip(pool_type="eos", eos_id=eot)
    tokens = _tokens(clip)
    with torch.no_grad():
        full = clip.encode_text(tokens)
        cut = encode_text(clip, tokens)
    assert can_cut(clip) and prompt_length(clip, tokens) == LONGEST
    assert _relative_error(cut, full) <= 1e-5


@pytest.mark.parametrize("overrides", [{"no_causal_mask": True}, {"pool_type": "last"}, {"pool_type": "first"}])
def test_towers_that_are_not_causal_with_eot_pooling_keep_the_full_length(overrides):
    clip = _tiny_clip(**overrides)
    tokens = _tokens(clip)
    assert not can_cut(clip)
    assert prompt_length(clip, tokens) == tokens.shape[1]
    with torch.no_grad():
        assert torch.equal(encode_text(clip, tokens), clip.encode_text(tokens))


@pytest.mark.parametrize("causal", [True, False])
def test_tokens_after_the_longest_end_of_text_matter_only_without_a_causal_mask(causal):
    """Why cutting is exact for a causal tower and is not done for a bi-directional one."""
    clip = _tiny_clip(no_causal_mask=not causal)
    tokens = _tokens(clip)
    changed = tokens.clone()
    changed[:, LONGEST:] = torch.randint(1, 40000, changed[:, LONGEST:].shape)  # ids below EOT: same argmax
    with torch.no_grad():
        error = _relative_error(clip.encode_text(changed), clip.encode_text(tokens))
    assert (error <= 1e-5) if causal else (error > 1e-3)


def test_classifier_runs_its_text_tower_at_the_prompts_length(tiny_model_factory):
    model = tiny_model_factory("adapter").eval()  # prompts: "a photo of a cat.", "a photo of a dog.", ...
    lengths: list[int] = []
    block = model.clip.transformer.resblocks[0]
    handle = block.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        model.text_features()
    finally:
        handle.remove()
    assert lengths == [8]  # SOT a photo of a dog . EOT
