"""The shared CLIP classifier and its training units (issue: foundation, parts 2-3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strategies.clip import MASKED_LOGIT, UnitsConfig, inject_units
from strategies.clip.units import tower_blocks

UNIT_KINDS = ["adapter", "moe", "lora"]


def _plain_logits(model, images):
    """Reference: CLIP logits computed by hand from open_clip's encoders."""
    clip = model.clip
    img = F.normalize(clip.encode_image(images), dim=-1)
    feats = []
    for prompts in model.class_prompts:
        t = F.normalize(clip.encode_text(model.tokenizer(prompts)), dim=-1)
        feats.append(F.normalize(t.mean(0), dim=-1))
    return clip.logit_scale.exp() * img @ torch.stack(feats).t()


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_units_at_init_give_plain_clip_logits(tiny_model_factory, kind):
    plain = tiny_model_factory("none").eval()
    model = tiny_model_factory(kind).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = _plain_logits(plain, images)
        torch.testing.assert_close(model(images), reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_perturbing_every_unit_changes_the_output(tiny_model_factory, kind):
    model = tiny_model_factory(kind, dropout=0.0).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(images).clone()
        for key, unit in model.units.items():
            saved = [p.clone() for p in unit.parameters()]
            for p in unit.parameters():
                p.add_(0.5 * torch.randn_like(p))
            assert not torch.allclose(model(images), base), f"unit {key} has no effect on the logits"
            for p, s in zip(unit.parameters(), saved, strict=True):
                p.copy_(s)


@pytest.mark.parametrize("kind", [*UNIT_KINDS, "full"])
def test_frozen_parameters_get_no_gradient(tiny_model_factory, kind):
    model = tiny_model_factory(kind).train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    unit_params = {id(p) for u in model.units.values() for p in u.parameters()}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
            assert id(p) not in unit_params, f"unit parameter {name} is frozen"
    assert not model.clip.logit_scale.requires_grad


@pytest.mark.parametrize("kind", [*UNIT_KINDS, "full"])
def test_unit_index_covers_every_block_of_both_towers(tiny_model_factory, kind):
    model = tiny_model_factory(kind)
    towers = tower_blocks(model.clip)
    expected = {(b, i) for b, blocks in towers.items() for i in range(len(blocks))}
    assert set(model.units) == expected == {("vision", 0), ("vision", 1), ("language", 0), ("language", 1)}
    trainable = {id(p) for p in model.trainable_parameters()}
    for key, unit in model.units.items():
        assert all(id(p) in trainable for p in unit.parameters()), key


def test_units_on_one_branch_only(tiny_model_factory):
    model = tiny_model_factory("adapter", branches=["vision"])
    assert set(model.units) == {("vision", 0), ("vision", 1)}


def test_bad_units_config_leaves_the_model_untouched(tiny_model_factory):
    model = tiny_model_factory("none")
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    with pytest.raises(ValueError, match="units.kind='bottleneck': expected one of adapter, moe, lora, full, none"):
        inject_units(model.clip, UnitsConfig(kind="bottleneck"))
    with pytest.raises(ValueError, match="units.branches: 'audio'"):
        inject_units(model.clip, UnitsConfig(branches=["audio"]))
    assert before.keys() == model.clip.state_dict().keys()


def test_inactive_classes_are_masked(tiny_model_factory):
    model = tiny_model_factory("adapter").eval()
    model.set_active_classes([0, 2])
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 32, 32))
    assert torch.all(logits[:, 1] == MASKED_LOGIT)
    assert torch.all(logits[:, [0, 2]] > MASKED_LOGIT)
    with pytest.raises(ValueError, match="outside"):
        model.set_active_classes([5])


def test_text_features_cached_until_text_side_changes(tiny_model_factory):
    model = tiny_model_factory("adapter", branches=["language"]).eval()
    with torch.no_grad():
        first = model.text_features()
        assert model.text_features() is first  # cached: same tensor object
        unit = model.units[("language", 0)]
        # an in-place update of a text-side parameter (like an optimizer step); random, since a constant
        # shift of every feature dimension is removed by the final LayerNorm
        unit.up.weight.add_(0.3 * torch.randn(unit.up.weight.shape, generator=torch.Generator().manual_seed(0)))
        second = model.text_features()
    assert second is not first and float((second - first).abs().max()) > 1e-3  # 0.019 on CPU: not rounding


def test_text_features_recomputed_with_graph_when_text_trains(tiny_model_factory):
    model = tiny_model_factory("adapter", branches=["language"]).train()
    feats = model.text_features()
    assert feats.requires_grad
    feats.sum().backward()
    assert model.units[("language", 1)].up.weight.grad is not None


def test_moe_router_noise_only_in_training(tiny_model_factory):
    model = tiny_model_factory("moe", dropout=0.0)
    unit = model.units[("vision", 0)]
    torch.nn.init.normal_(unit.w_noise, std=1.0)
    x = torch.randn(2, 5, 64)
    unit.eval()
    torch.testing.assert_close(unit.gates(x), unit.gates(x))
    torch.testing.assert_close(unit.gates(x), torch.full((2, 2), 0.5))  # zero router: uniform gates
    unit.train()
    assert not torch.allclose(unit.gates(x), unit.gates(x))


def test_unavailable_pretrained_weights_give_one_clear_error(tmp_path):
    from strategies.clip import ModelConfig, WeightsUnavailableError, build_clip

    # HF_HUB_OFFLINE=1 (conftest) and an empty cache: the weights are neither cached nor downloadable
    cfg = ModelConfig(arch="ViT-B-16", pretrained="openai", units=UnitsConfig(kind="none"), cache_dir=str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="set model.pretrained to a local weights file"):
        build_clip(cfg)


def test_train_and_eval_prompt_sets(tiny_model_factory):
    model = tiny_model_factory("adapter").eval()
    eval_prompts = [["a photo of a cat.", "art of a cat."], ["a photo of a dog."], ["a car."]]
    train_prompts = [["a cat."], ["a dog."], ["a photo of a car."]]
    model.set_class_prompts(eval_prompts, train_prompts=train_prompts)
    with torch.no_grad():
        reference = {name: torch.stack([F.normalize(F.normalize(model.clip.encode_text(model.tokenizer(p)),
                                                                dim=-1).mean(0), dim=0) for p in prompts])
                     for name, prompts in (("train", train_prompts), ("eval", eval_prompts))}
        assert model.prompt_set == "eval" and model.class_prompts is eval_prompts  # evaluation by default
        torch.testing.assert_close(model.text_features(), reference["eval"], atol=1e-5, rtol=0)
        model.use_prompts("train")
        assert model.class_prompts is train_prompts
        torch.testing.assert_close(model.text_features(), reference["train"], atol=1e-5, rtol=0)
        with model.using_prompts("eval"):  # e.g. ConDU's prototypes while training
            torch.testing.assert_close(model.text_features([1, 2]), reference["eval"][1:], atol=1e-5, rtol=0)
        assert model.prompt_set == "train"
    with pytest.raises(ValueError, match=r"prompt set 'test'; allowed: train, eval"):
        model.use_prompts("test")
    with pytest.raises(ValueError, match="train_prompts has 2 classes but class_prompts 3"):
        model.set_class_prompts(eval_prompts, train_prompts=train_prompts[:2])
    with pytest.raises(ValueError, match=r"train_prompts: classes \[1\] have no prompt"):
        model.set_class_prompts(eval_prompts, train_prompts=[["a cat."], [], ["a car."]])
