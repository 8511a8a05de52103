"""ConDU fusion and prototype maths (ConDU §3: unifying, decoupling, semantic prototypes, aggregated inference)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from strategies.condu.fusion import (
    Trigger,
    decouple_into,
    decouple_reference,
    elect,
    merge_delta,
    pack_mask,
    storage_report,
    task_delta,
    unify_deltas,
    unify_reference,
    unmerge_delta,
    unpack_mask,
)
from strategies.condu.prototypes import (
    aggregate_logits,
    aggregation_weights,
    class_prototypes,
    select_tasks,
    task_scores,
)

T = torch.tensor

# --------------------------------------------------------------------------- hand-computed 3-task example
# Two tensors, 6 entries, with sign conflicts, zeros and two zero-sum (tie) entries.
#            w0  w1  w2  w3    b0  b1
# δ¹      =   2  -1   0   3     1  -2
# δ²      =   1   2  -1  -3     0   2
# δ³      =  -4   1   0   1    -1   0
# mean    = -1/3 2/3 -1/3 1/3   0   0
# s       =  -1  +1  -1  +1    -1  -1    (mean 0 elects −1)
# M¹      =   0   0   0   1     0   1
# M²      =   0   1   1   0     0   0
# M³      =   1   1   0   1     1   0
# U       =  -4   2  -1   3    -1  -2    (largest agreeing magnitude, sign s)
# mean_abs: num¹ = 6/4 + 3/2 = 3,    den¹ = |M¹U|: 3/4 + 2/2 = 7/4      → λ1 = 12/7
#           num² = 7/4 + 2/2 = 11/4, den² = 3/4 + 0   = 3/4             → λ2 = 11/3
#           num³ = 6/4 + 1/2 = 2,    den³ = 9/4 + 1/2 = 11/4            → λ3 = 8/11
# l1:       ‖δ¹‖₁ = 9, ‖M¹U‖₁ = 5 → 9/5;  ‖δ²‖₁ = 9, ‖M²U‖₁ = 3 → 3;  ‖δ³‖₁ = 7, ‖M³U‖₁ = 10 → 7/10
HAND_DELTAS = [
    {"w": T([2.0, -1, 0, 3]), "b": T([1.0, -2])},
    {"w": T([1.0, 2, -1, -3]), "b": T([0.0, 2])},
    {"w": T([-4.0, 1, 0, 1]), "b": T([-1.0, 0])},
]
HAND_SIGNS = {"w": T([-1.0, 1, -1, 1]), "b": T([-1.0, -1])}
HAND_UNIFIED = {"w": T([-4.0, 2, -1, 3]), "b": T([-1.0, -2])}
HAND_MASKS = [
    {"w": T([0, 0, 0, 1]), "b": T([0, 1])},
    {"w": T([0, 1, 1, 0]), "b": T([0, 0])},
    {"w": T([1, 1, 0, 1]), "b": T([1, 0])},
]
HAND_RESCALERS = {"mean_abs": [12 / 7, 11 / 3, 8 / 11], "l1": [9 / 5, 3.0, 7 / 10]}


def test_hand_election_signs_unified_masks() -> None:
    for key in ("w", "b"):
        signs, unified, masks = elect(torch.stack([d[key] for d in HAND_DELTAS]))
        assert torch.equal(signs, HAND_SIGNS[key])
        assert torch.equal(unified, HAND_UNIFIED[key])
        assert torch.equal(masks, torch.stack([m[key] for m in HAND_MASKS]).bool())


@pytest.mark.parametrize("rescaler", ["mean_abs", "l1"])
def test_hand_rescalers_and_decoupled_deltas(rescaler: str) -> None:
    unified, triggers = unify_deltas(HAND_DELTAS, rescaler=rescaler)
    assert set(unified) == {"w", "b"}
    for key in unified:
        assert torch.equal(unified[key], HAND_UNIFIED[key])
    for trig, mask, lam in zip(triggers, HAND_MASKS, HAND_RESCALERS[rescaler], strict=True):
        assert trig.rescaler == pytest.approx(lam, rel=1e-12)
        for key in unified:
            assert torch.equal(trig.unpack(key), mask[key].bool())
    # δ̃¹ = 12/7·(0,0,0,3 | 0,-2), δ̃² = 11/3·(0,2,-1,0 | 0,0), δ̃³ = 8/11·(-4,2,0,3 | -1,0) for mean_abs
    for trig, mask, lam in zip(triggers, HAND_MASKS, HAND_RESCALERS[rescaler], strict=True):
        tilde = decouple_reference(unified, trig)
        for key in unified:
            expected = lam * mask[key] * HAND_UNIFIED[key]
            torch.testing.assert_close(tilde[key], expected.float(), rtol=1e-6, atol=0)
    if rescaler == "mean_abs":
        torch.testing.assert_close(decouple_reference(unified, triggers[0])["w"], T([0.0, 0, 0, 36 / 7]))
        torch.testing.assert_close(decouple_reference(unified, triggers[2])["b"], T([-8 / 11, 0.0]))


def test_zero_denominator_gives_unit_rescaler_and_zero_delta() -> None:
    # δ¹ = -1 loses to δ² = 5 (mean 2 > 0 → s = +1): M¹ = 0, Σ mean|M¹U| = 0 → λ1 = 1, δ̃¹ = 0.
    unified, triggers = unify_deltas([{"x": T([-1.0])}, {"x": T([5.0])}])
    assert triggers[0].rescaler == 1.0
    assert torch.equal(decouple_reference(unified, triggers[0])["x"], T([0.0]))
    assert triggers[1].rescaler == 1.0 and torch.equal(decouple_reference(unified, triggers[1])["x"], T([5.0]))


# --------------------------------------------------------------------------- session properties

SHAPES = {"a": (7, 5), "b": (13,), "c": (3, 4, 2), "d": (1,)}


def _random_delta(gen: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in SHAPES.items():
        x = torch.randn(shape, generator=gen) * scale
        x[torch.rand(shape, generator=gen) < 0.2] = 0.0  # exact zeros: outside every support
        out[key] = x
    return out


def _mean_abs(delta: dict[str, torch.Tensor]) -> float:
    return sum(v.abs().double().mean().item() for v in delta.values())


def _reference_session(old: list[dict], new: dict, rescaler: str) -> tuple[dict, list[dict], list[float]]:
    """All-at-once unify: stack every task's full delta, elect, global rescalers; returns decoupled deltas."""
    deltas = [*old, new]
    unified, masks = {}, [{} for _ in deltas]
    for key in new:
        stack = torch.stack([d[key] for d in deltas])
        s = torch.where(stack.mean(0) > 0, 1.0, -1.0)
        agree = stack * s > 0
        unified[key] = s * (stack.abs() * agree).amax(0)
        for i in range(len(deltas)):
            masks[i][key] = agree[i]
    def reduce(x: torch.Tensor) -> torch.Tensor:
        return x.abs().double().mean() if rescaler == "mean_abs" else x.abs().double().sum()

    lams = []
    for d, m in zip(deltas, masks, strict=True):
        num = sum(reduce(d[k]) for k in d).item()
        den = sum(reduce(m[k] * unified[k]) for k in d).item()
        lams.append(num / den if den > 0 else 1.0)
    tilde = [{k: lam * m[k] * unified[k] for k in unified} for lam, m in zip(lams, masks, strict=True)]
    return unified, tilde, lams


def _l1(delta: dict[str, torch.Tensor]) -> float:
    return sum(v.abs().double().sum().item() for v in delta.values())


def _check_session_properties(
    tilde: list[dict], inputs: list[dict], originals: list[dict], rescaler: str
) -> None:
    """Signs kept, support shrinks, magnitude kept (docs/methods/condu.md#properties-tested); `inputs` = the
    elected deltas."""
    for i, (t_i, orig) in enumerate(zip(tilde, originals, strict=True)):
        for k in orig:
            assert bool((t_i[k] * orig[k] >= 0).all()), f"sign flipped, task {i} key {k}"
            assert bool((inputs[i][k] != 0)[t_i[k] != 0].all()), f"support grew, task {i} key {k}"
            assert bool((orig[k] != 0)[t_i[k] != 0].all()), f"support outside δ, task {i} key {k}"
        if rescaler == "mean_abs":  # Σ_tensors mean|δ̃ⁱ| = Σ_tensors mean|input δⁱ| (= original by induction)
            assert _mean_abs(t_i) == pytest.approx(_mean_abs(inputs[i]), rel=1e-5)
            assert _mean_abs(t_i) == pytest.approx(_mean_abs(orig), rel=1e-4)
        else:  # ‖δ̃ⁱ‖₁ = ‖input δⁱ‖₁
            assert _l1(t_i) == pytest.approx(_l1(inputs[i]), rel=1e-5)
            assert _l1(t_i) == pytest.approx(_l1(orig), rel=1e-4)


@pytest.mark.parametrize("rescaler", ["mean_abs", "l1"])
def test_sessions_properties_and_reference(rescaler: str) -> None:
    gen = torch.Generator().manual_seed(0)
    originals: list[dict] = []
    unified, triggers = None, []
    ref_tilde: list[dict] = []
    prev_tilde: list[dict] = []
    for session in range(6):
        new = _random_delta(gen, scale=0.5 + session)
        originals.append(new)
        unified, triggers = unify_reference(unified, triggers, new, rescaler=rescaler)
        tilde = [decouple_reference(unified, trig) for trig in triggers]
        assert len(triggers) == session + 1
        if session == 0:  # single task: exact
            assert triggers[0].rescaler == 1.0
            assert all(torch.equal(tilde[0][k], new[k]) for k in new)
        # streaming == all-at-once reference (fed the reference's own previous decoupled deltas)
        ref_unified, ref_tilde, ref_lams = _reference_session(ref_tilde, new, rescaler)
        for k in new:
            torch.testing.assert_close(unified[k], ref_unified[k], rtol=1e-5, atol=1e-7)
        assert [t.rescaler for t in triggers] == pytest.approx(ref_lams, rel=1e-5)
        for mine, ref in zip(tilde, ref_tilde, strict=True):
            for k in new:
                torch.testing.assert_close(mine[k], ref[k], rtol=1e-5, atol=1e-7)
        _check_session_properties(tilde, [*prev_tilde, new], originals, rescaler)
        prev_tilde = tilde
    assert sum(bool((tilde[0][k] != originals[0][k]).any()) for k in SHAPES), "sanity: not lossless"


def test_unify_is_lossy_but_old_support_shrinks_strictly_somewhere() -> None:
    gen = torch.Generator().manual_seed(1)
    d1, d2 = _random_delta(gen, 1.0), _random_delta(gen, 1.0)
    unified, triggers = unify_reference(None, [], d1)
    unified, triggers = unify_reference(unified, triggers, d2)
    t1 = decouple_reference(unified, triggers[0])
    shrunk = sum(int((d1[k] != 0).sum() - (t1[k] != 0).sum()) for k in d1)
    assert shrunk > 0


def test_unify_validation() -> None:
    d = {"w": torch.ones(3)}
    with pytest.raises(ValueError, match="mean_abs"):
        unify_reference(None, [], d, rescaler="l2")
    unified, triggers = unify_reference(None, [], d)
    with pytest.raises(ValueError, match="'w'"):
        unify_reference(unified, triggers, {"w": torch.ones(4)})
    with pytest.raises(ValueError, match="missing keys"):
        unify_reference(unified, triggers, {"v": torch.ones(3)})
    with pytest.raises(ValueError, match="triggers"):
        unify_reference(None, triggers, d)
    with pytest.raises(ValueError, match="'w'"):
        unify_deltas([d, {"w": torch.ones(2)}])


# --------------------------------------------------------------------------- pack / unpack, trigger


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (13,), (3, 5), (2, 3, 4), (4, 1, 3, 3)])
def test_pack_unpack_round_trip(shape: tuple[int, ...]) -> None:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) < 0.5
    packed = pack_mask(mask)
    n = mask.numel()
    assert packed.dtype == torch.uint8 and packed.shape == ((n + 7) // 8,)
    assert torch.equal(unpack_mask(packed, shape), mask)


def test_pack_bit_order_is_numpy_packbits() -> None:
    # entries 0 and 9 set: byte0 = 1000_0000 = 128, byte1 = 0100_0000 = 64
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[0, 9]] = True
    assert pack_mask(mask).tolist() == [128, 64]


def test_trigger_state_dict_and_pickle() -> None:
    unified, triggers = unify_deltas(HAND_DELTAS)
    trig = triggers[1]
    back = Trigger.from_state_dict(trig.state_dict())
    again = pickle.loads(pickle.dumps(trig))
    for other in (back, again):
        assert other.rescaler == trig.rescaler and other.shapes == trig.shapes
        assert all(torch.equal(other.mask[k], trig.mask[k]) for k in trig.mask)
    sd = trig.state_dict()
    assert isinstance(sd["rescaler"], float) and sd["shapes"] == {"w": [4], "b": [2]}
    with pytest.raises(ValueError, match="'w'"):
        Trigger(mask={"w": torch.zeros(2, dtype=torch.uint8)}, shapes={"w": (4,)}, rescaler=1.0)


# --------------------------------------------------------------------------- delta, merge / unmerge, decouple


def _toy_params(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}


def test_task_delta_and_merge_unmerge_restore() -> None:
    gen = torch.Generator().manual_seed(2)
    theta0 = _toy_params(gen)
    theta = {k: v + torch.randn(v.shape, generator=gen) for k, v in theta0.items()}
    theta0_with_int = {**theta0, "steps": torch.tensor(3)}
    delta = task_delta(theta, theta0_with_int)
    assert set(delta) == set(SHAPES)
    params = {k: v.clone() for k, v in theta0.items()}
    merge_delta(params, delta)
    for k in params:
        torch.testing.assert_close(params[k], theta[k])
    unmerge_delta(params, delta)
    for k in params:
        torch.testing.assert_close(params[k], theta0[k])
    # dyadic values: merge/unmerge with alpha is exact
    exact = {k: torch.randint(-8, 8, s, generator=gen).float() / 4 for k, s in SHAPES.items()}
    params = {k: v.clone() for k, v in exact.items()}
    merge_delta(params, exact, alpha=0.5)
    assert not torch.equal(params["a"], exact["a"])
    unmerge_delta(params, exact, alpha=0.5)
    assert all(torch.equal(params[k], exact[k]) for k in exact)


def test_delta_shape_checks_name_the_key_and_change_nothing() -> None:
    params = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="'b'"):
        merge_delta(params, {"a": torch.ones(2), "b": torch.ones(4)})
    assert torch.equal(params["a"], torch.zeros(2))  # checked before any write
    with pytest.raises(ValueError, match="'b'"):
        task_delta({"a": torch.ones(2), "b": torch.ones(4)}, params)


def test_decouple_into_writes_task_model_in_place() -> None:
    gen = torch.Generator().manual_seed(3)
    theta0 = _toy_params(gen)
    deltas = [_random_delta(gen, 1.0) for _ in range(3)]
    unified, triggers = unify_deltas(deltas)
    params = {k: torch.nn.Parameter(torch.zeros(s)) for k, s in SHAPES.items()}
    ptrs = {k: p.data_ptr() for k, p in params.items()}
    decouple_into(params, theta0, unified, triggers[2])
    tilde = decouple_reference(unified, triggers[2])
    for k in SHAPES:
        assert params[k].data_ptr() == ptrs[k]
        torch.testing.assert_close(params[k].detach(), theta0[k] + tilde[k])


@pytest.mark.gpu
def test_unify_on_cuda_keeps_devices() -> None:
    gen = torch.Generator().manual_seed(4)
    deltas = [_random_delta(gen, 1.0) for _ in range(3)]
    unified, triggers = None, []
    for d in deltas:
        unified, triggers = unify_reference(unified, triggers, {k: v.cuda() for k, v in d.items()})
    assert all(u.is_cuda for u in unified.values())
    assert all(not m.is_cuda for m in triggers[0].mask.values())
    cpu_u, cpu_t = None, []
    for d in deltas:
        cpu_u, cpu_t = unify_reference(cpu_u, cpu_t, d)
    for k in SHAPES:
        torch.testing.assert_close(unified[k].cpu(), cpu_u[k])


# --------------------------------------------------------------------------- storage


def test_storage_report_hand_numbers() -> None:
    # θ⁰ and U: 10 + 3 float32 entries = 52 bytes each. Mask: 10 entries → 2 bytes, 3 → 1 byte; λ 4 bytes.
    theta0 = {"w": torch.zeros(2, 5), "b": torch.zeros(3)}
    unified, triggers = unify_deltas([{"w": torch.ones(2, 5), "b": -torch.ones(3)}] * 2)
    report = storage_report(theta0, unified, triggers, prototypes_bytes=[24, 40])
    assert report["theta0"] == 52 and report["unified"] == 52 and report["shared"] == 104
    assert report["per_task"][0] == {"mask": 3, "rescaler": 4, "prototypes": 24, "total": 31}
    assert report["per_task"][1]["total"] == 47
    assert report["tasks"] == 78 and report["total"] == 182
    assert triggers[0].nbytes() == 7
    with pytest.raises(ValueError, match="prototype"):
        storage_report(theta0, unified, triggers, prototypes_bytes=[24])


# --------------------------------------------------------------------------- prototypes and aggregation


def test_class_prototypes_formula_and_class_without_images() -> None:
    # official code: the template mean t_k enters un-normalised (here |t_k| = 0.6, 1.5, 3)
    gen = torch.Generator().manual_seed(5)
    img = torch.randn(6, 4, generator=gen)
    labels = T([10, 12, 10, 12, 12, 10])
    unit = F.normalize(torch.randn(3, 4, generator=gen), dim=-1)
    text = unit * T([[0.6], [1.5], [3.0]])
    protos = class_prototypes(img, labels, text, classes=[12, 10, 11])  # 11 has no images
    torch.testing.assert_close(protos[2], unit[2])
    img_n = F.normalize(img, dim=-1)
    expected_12 = F.normalize((img_n[[1, 3, 4]].mean(0) + 0.6 * unit[0]) / 2, dim=0)
    torch.testing.assert_close(protos[0], expected_12)
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(3))
    assert (protos[0] - F.normalize((img_n[[1, 3, 4]].mean(0) + unit[0]) / 2, dim=0)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="13"):
        class_prototypes(img, T([10, 12, 13, 12, 12, 10]), text, classes=[12, 10, 11])


def test_class_prototypes_with_normalized_text_option() -> None:
    # prototype_text: normalized (the project's former behaviour): normalize(t_k) enters the mean
    img = T([[2.0, 0.0], [0.0, 1.0]])
    text = T([[0.0, 0.5], [0.0, 0.5]])  # a template mean of norm 0.5 for both classes
    labels = T([0, 1])
    # class 0: image e1, text e2 -> normalize((e1 + e2) / 2) = (1, 1)/√2; un-normalised: (1, .5)/|.|
    normed = class_prototypes(img, labels, text, classes=[0, 1], normalize_text=True)
    torch.testing.assert_close(normed[0], T([2**-0.5, 2**-0.5]))
    official = class_prototypes(img, labels, text, classes=[0, 1])
    torch.testing.assert_close(official[0], T([1.0, 0.5]) / 1.25**0.5)
    torch.testing.assert_close(official[1], normed[1])  # image and text both along e2: same direction


def test_task_scores_hand_example() -> None:
    images = T([[1.0, 0.0], [0.0, 2.0]])
    # task 0 prototypes: e1 and (e1+e2)/√2; task 1: −e1
    protos = [T([[1.0, 0.0], [2**-0.5, 2**-0.5]]), T([[-1.0, 0.0]])]
    # image e1: task0 max(1, .707) = 1, task1 −1;  image e2: task0 max(0, .707) = .707, task1 0
    expected = T([[1.0, -1.0], [2**-0.5, 0.0]])
    torch.testing.assert_close(task_scores(images, protos), expected)
    assert torch.equal(select_tasks(expected, 1), T([[0], [0]]))
    assert select_tasks(expected, 5).shape == (2, 2)


def test_aggregate_uniform_all_tasks_is_plain_mean() -> None:
    gen = torch.Generator().manual_seed(6)
    n_tasks, batch, n_cls = 3, 4, 5
    scores = torch.rand(batch, n_tasks, generator=gen)
    selected = select_tasks(scores, k=4)  # K ≥ S: every task
    weights = aggregation_weights(scores, selected, "uniform")
    pre = torch.randn(batch, n_cls, generator=gen)
    tasks = torch.randn(n_tasks, batch, n_cls, generator=gen)
    out = aggregate_logits(pre, tasks, selected, weights)
    torch.testing.assert_close(out, (pre + tasks.sum(0)) / (1 + n_tasks))
    calls = []

    def fn(task: int, rows: torch.Tensor) -> torch.Tensor:
        calls.append(task)
        return tasks[task, rows]

    torch.testing.assert_close(aggregate_logits(pre, fn, selected, weights), out)
    assert calls == [0, 1, 2]


def test_aggregate_top1_and_weight_modes() -> None:
    scores = T([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    selected = select_tasks(scores, 1)  # [[0], [2]]
    pre = torch.zeros(2, 2)
    tasks = T([[[1.0, 0], [9, 9]], [[9.0, 9], [9, 9]], [[9.0, 9], [0, 1]]])  # (S=3, B=2, C=2)
    out = aggregate_logits(pre, tasks, selected, aggregation_weights(scores, selected))
    torch.testing.assert_close(out, T([[0.5, 0.0], [0.0, 0.5]]))
    # explicit weights (pretrained, task): row 0 = .25·0 + .75·(1, 0); row 1 = .6·0 + .4·(0, 1)
    out = aggregate_logits(pre, tasks, selected, T([[0.25, 0.75], [0.6, 0.4]]))
    torch.testing.assert_close(out, T([[0.75, 0.0], [0.0, 0.4]]))
    for mode in ("similarity", "softmax"):
        w = aggregation_weights(scores, select_tasks(scores, 2), mode, temperature=0.1)
        torch.testing.assert_close(w.sum(1), torch.ones(2))
    # similarity with K = 2, row 0: selected scores .9, .5 → pretrained .7 → weights (.7, .9, .5) / 2.1
    w = aggregation_weights(scores, select_tasks(scores, 2), "similarity")
    torch.testing.assert_close(w[0], T([0.7, 0.9, 0.5]) / 2.1)
    with pytest.raises(ValueError, match="uniform"):
        aggregation_weights(scores, selected, "max")
