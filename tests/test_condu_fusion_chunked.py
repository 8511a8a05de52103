"""ConDU fusion in bounded memory (issue 14, item 4): chunked unify/decouple give the same bits.

Shapes are large enough for several SUM_BLOCKs (4096 entries) and chunk sizes of 1, 3 and all blocks;
a tensor with 0 entries and one smaller than a mask byte are included.
"""

from __future__ import annotations

import pytest
import torch

from strategies.condu import fusion
from strategies.condu.fusion import (
    BYTES_PER_TASK_ELEMENT,
    SUM_BLOCK,
    Trigger,
    decouple_into,
    decouple_reference,
    elect,
    pack_mask,
    task_delta,
    unify_deltas,
    unify_into,
    unify_reference,
)

SHAPES = {"w": (97, 131), "v": (3 * SUM_BLOCK + 5,), "b": (3,), "e": (0, 4)}
SESSIONS = 5
WHOLE = 2**40  # a chunk budget larger than every tensor: the unchunked computation


def _budget(blocks: int, tasks: int) -> int:
    """chunk_bytes giving chunks of ``blocks`` SUM_BLOCKs at ``tasks`` tasks."""
    return blocks * SUM_BLOCK * BYTES_PER_TASK_ELEMENT * tasks


def _delta(gen: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in SHAPES.items():
        x = torch.randn(shape, generator=gen) * scale
        # magnitudes over 1e-12..1e12: float64 sums of them are inexact, so the summation order shows
        x *= 10.0 ** torch.randint(-12, 13, shape, generator=gen)
        x[torch.rand(shape, generator=gen) < 0.2] = 0.0  # exact zeros and ties in the election
        out[key] = x
    return out


def _assert_same(a: tuple[dict, list[Trigger]], b: tuple[dict, list[Trigger]]) -> None:
    (ua, ta), (ub, tb) = a, b
    assert ua.keys() == ub.keys()
    assert all(torch.equal(ua[k], ub[k]) for k in ua)
    assert [t.rescaler for t in ta] == [t.rescaler for t in tb]  # exactly, not approximately
    for x, y in zip(ta, tb, strict=True):
        assert all(torch.equal(x.mask[k], y.mask[k]) for k in x.mask)


def _sessions(chunk_bytes: int | None, rescaler: str = "mean_abs") -> tuple[dict, list[Trigger]]:
    gen = torch.Generator().manual_seed(0)
    unified, triggers = None, []
    for t in range(SESSIONS):
        unified, triggers = unify_reference(unified, triggers, _delta(gen, 1.0 + t), rescaler=rescaler,
                                  chunk_bytes=chunk_bytes)
    return unified, triggers


@pytest.mark.parametrize("rescaler", ["mean_abs", "l1"])
def test_chunked_unify_is_bit_identical_to_unchunked(rescaler):
    whole = _sessions(WHOLE, rescaler)
    for blocks in (1, 3):
        _assert_same(_sessions(_budget(blocks, SESSIONS), rescaler), whole)
    _assert_same(_sessions(None, rescaler), whole)
    _assert_same(_sessions(1, rescaler), whole)  # the smallest budget: one block per chunk


def test_chunks_really_are_smaller_than_the_tensors():
    assert fusion._chunk_elements({"w": 10**6}, 4, _budget(1, 4)) == SUM_BLOCK
    assert fusion._chunk_elements({"w": 10**6}, 4, _budget(3, 4)) == 3 * SUM_BLOCK
    # default: at most 1/16 of the delta's fp32 size for the chunk temporaries, at least one block
    assert fusion._chunk_elements({"w": 2**22}, 1, None) * BYTES_PER_TASK_ELEMENT <= 4 * 2**22 // 16
    assert fusion._chunk_elements({"w": 10}, 11, None) == SUM_BLOCK
    with pytest.raises(ValueError, match="chunk_bytes must be >= 1"):
        fusion._chunk_elements({"w": 10}, 1, 0)


def test_chunked_unify_deltas_is_bit_identical_to_unchunked():
    gen = torch.Generator().manual_seed(1)
    deltas = [_delta(gen, 1.0) for _ in range(4)]
    _assert_same(unify_deltas(deltas, chunk_bytes=_budget(1, 4)), unify_deltas(deltas, chunk_bytes=WHOLE))


def _legacy_session(unified, triggers, new, rescaler="mean_abs"):
    """The per-tensor session of the previous implementation (commit 936cdb4), for comparison."""
    u_out, masks, num, den = {}, [{} for _ in range(len(triggers) + 1)], 0.0, 0.0
    num = torch.zeros(len(triggers) + 1, dtype=torch.float64)
    den = torch.zeros(len(triggers) + 1, dtype=torch.float64)
    for key, d in new.items():
        stack = torch.stack([*(decouple_reference(unified, t)[key] for t in triggers), d])  # (T, *shape)
        _, u, m = elect(stack)
        u_out[key] = u
        for i in range(len(masks)):
            masks[i][key] = pack_mask(m[i])
        for acc, x in ((num, stack), (den, m * u)):
            flat = x.reshape(x.shape[0], -1).abs()
            if flat.shape[1]:
                acc += flat.mean(1, dtype=torch.float64) if rescaler == "mean_abs" else flat.sum(1, dtype=torch.float64)
    lams = fusion._rescalers(num, den)
    shapes = {k: v.shape for k, v in new.items()}
    return u_out, [Trigger(mask=m, shapes=dict(shapes), rescaler=lam) for m, lam in zip(masks, lams, strict=True)]


def test_streamed_result_matches_the_previous_implementation():
    """U and every mask bit-identical; λ to float64 rounding (the sums are now added in blocks)."""
    gen = torch.Generator().manual_seed(2)
    unified, triggers = None, []
    for t in range(SESSIONS):
        new = _delta(gen, 1.0 + t)
        ref_u, ref_t = _legacy_session(unified or {}, triggers, new)
        unified, triggers = unify_reference(unified, triggers, new, chunk_bytes=_budget(1, t + 1))
        assert all(torch.equal(unified[k], ref_u[k]) for k in new)
        for mine, ref in zip(triggers, ref_t, strict=True):
            assert all(torch.equal(mine.mask[k], ref.mask[k]) for k in new)
            assert mine.rescaler == pytest.approx(ref.rescaler, rel=1e-13)
            for k in new:  # decoupled deltas: λ is applied in float32, where 1e-13 does not show
                torch.testing.assert_close(decouple_reference(unified, mine)[k], decouple_reference(ref_u, ref)[k],
                                           rtol=1e-7, atol=0)


def test_unify_into_is_unify_of_task_delta_in_place():
    gen = torch.Generator().manual_seed(3)
    theta0 = _delta(gen, 1.0)
    ref_u, ref_t = None, []
    unified, triggers = None, []
    for t in range(SESSIONS):
        theta = {k: torch.nn.Parameter(theta0[k] + d) for k, d in _delta(gen, 1.0 + t).items()}
        ref_u, ref_t = unify_reference(ref_u, ref_t, task_delta(theta, theta0), chunk_bytes=WHOLE)
        before = None if unified is None else {k: u.data_ptr() for k, u in unified.items() if u.numel()}
        old_masks = [{k: m.data_ptr() for k, m in trig.mask.items() if m.numel()} for trig in triggers]
        unified, triggers = unify_into(unified, triggers, theta, theta0, chunk_bytes=_budget(1, t + 1))
        _assert_same((unified, triggers), (ref_u, ref_t))
        if before is not None:  # U and the old masks were overwritten, not reallocated
            assert before == {k: u.data_ptr() for k, u in unified.items() if u.numel()}
        for trig, ptrs in zip(triggers, old_masks, strict=False):
            assert ptrs == {k: m.data_ptr() for k, m in trig.mask.items() if m.numel()}


def test_unify_into_checks_before_changing_anything():
    gen = torch.Generator().manual_seed(4)
    theta0 = _delta(gen, 1.0)
    unified, triggers = unify_into(None, [], {k: v + 1 for k, v in theta0.items()}, theta0)
    saved = {k: u.clone() for k, u in unified.items()}
    bad = {k: v for k, v in theta0.items() if k != "w"}
    with pytest.raises(ValueError, match="missing keys \\['w'\\]"):
        unify_into(unified, triggers, bad, theta0)
    with pytest.raises(ValueError, match="needs the triggers"):
        unify_into(unified, [], theta0, theta0)
    assert all(torch.equal(unified[k], saved[k]) for k in saved) and len(triggers) == 1


def test_chunked_decouple_into_is_bit_identical():
    gen = torch.Generator().manual_seed(5)
    theta0 = _delta(gen, 1.0)
    unified, triggers = unify_deltas([_delta(gen, 1.0) for _ in range(3)])
    results = []
    for chunk_bytes in (1, _budget(3, 1), WHOLE):
        params = {k: torch.nn.Parameter(torch.zeros(s)) for k, s in SHAPES.items()}
        decouple_into(params, theta0, unified, triggers[1], chunk_bytes=chunk_bytes)
        results.append({k: p.detach().clone() for k, p in params.items()})
    tilde = decouple_reference(unified, triggers[1])
    for res in results:
        assert all(torch.equal(res[k], theta0[k] + tilde[k]) for k in SHAPES)
