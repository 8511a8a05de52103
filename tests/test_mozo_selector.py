"""Tables of (branch, layers) -> exact ZO unit sets for MoZO's branch/layer-wise selection."""

from __future__ import annotations

import pytest

from strategies.mozo.selector import parse_layers, select_zo_units

CLIP_B16 = [(t, i) for t in ("vision", "language") for i in range(12)]
TINY = [(t, i) for t in ("vision", "language") for i in range(2)]
UNEVEN = [("vision", i) for i in range(4)] + [("language", i) for i in range(2)]


def keys(tower: str, *indices: int) -> set[tuple[str, int]]:
    return {(tower, i) for i in indices}


EVEN12 = (0, 2, 4, 6, 8, 10)  # 0-based indices of layer numbers 1, 3, 5, ... (hop-odd, 1-based)
ODD12 = (1, 3, 5, 7, 9, 11)

CASES_B16 = [
    ("none", "all", set()),
    ("none", "hop-even", set()),
    ("dual", "all", set(CLIP_B16)),
    ("vision", "all", keys("vision", *range(12))),
    ("language", "all", keys("language", *range(12))),
    ("dual", "hop-odd", keys("vision", *EVEN12) | keys("language", *EVEN12)),
    ("dual", "hop-even", keys("vision", *ODD12) | keys("language", *ODD12)),
    ("dual", "Hop-even", keys("vision", *ODD12) | keys("language", *ODD12)),
    ("vision", "hop-even", keys("vision", *ODD12)),
    ("language", "hop-odd", keys("language", *EVEN12)),
    ("dual", "prefix-6", keys("vision", *range(6)) | keys("language", *range(6))),
    ("dual", "suffix-6", keys("vision", *range(6, 12)) | keys("language", *range(6, 12))),
    ("vision", "prefix-1", keys("vision", 0)),
    ("language", "suffix-1", keys("language", 11)),
    ("vision", "suffix-12", keys("vision", *range(12))),
    ("dual", [1, 12], keys("vision", 0, 11) | keys("language", 0, 11)),
    ("language", (2, 4, 6), keys("language", 1, 3, 5)),
    ("vision", "2,4, 6", keys("vision", 1, 3, 5)),
]

CASES_TINY = [
    ("dual", "all", set(TINY)),
    ("dual", "hop-odd", {("vision", 0), ("language", 0)}),
    ("dual", "hop-even", {("vision", 1), ("language", 1)}),
    ("vision", "hop-even", {("vision", 1)}),
    ("language", "prefix-1", {("language", 0)}),
    ("dual", "suffix-1", {("vision", 1), ("language", 1)}),
    ("dual", "prefix-2", set(TINY)),
    ("vision", [2], {("vision", 1)}),
    ("none", "all", set()),
]


@pytest.mark.parametrize(("branch", "layers", "expected"), CASES_B16)
def test_select_clip_b16(branch, layers, expected):
    assert select_zo_units(CLIP_B16, branch, layers) == expected


@pytest.mark.parametrize(("branch", "layers", "expected"), CASES_TINY)
def test_select_tiny(branch, layers, expected):
    assert select_zo_units(TINY, branch, layers) == expected


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ("hop-odd", keys("vision", *ODD12) | keys("language", *ODD12)),
        ("hop-even", keys("vision", *EVEN12) | keys("language", *EVEN12)),
        ([0, 11], keys("vision", 0, 11) | keys("language", 0, 11)),
        ("prefix-2", keys("vision", 0, 1) | keys("language", 0, 1)),
    ],
)
def test_zero_based_flips_parity_and_numbers(layers, expected):
    assert select_zo_units(CLIP_B16, "dual", layers, one_based=False) == expected


def test_towers_with_different_depths():
    assert select_zo_units(UNEVEN, "dual", "suffix-2") == keys("vision", 2, 3) | keys("language", 0, 1)
    assert select_zo_units(UNEVEN, "dual", "hop-even") == keys("vision", 1, 3) | keys("language", 1)
    assert select_zo_units(UNEVEN, "vision", "prefix-4") == keys("vision", 0, 1, 2, 3)
    with pytest.raises(ValueError, match=r"K=3 must be in 1\.\.2"):
        select_zo_units(UNEVEN, "dual", "prefix-3")  # fits vision, not language


def test_unordered_and_generator_keys():
    gen = (k for k in reversed(CLIP_B16))
    assert select_zo_units(gen, "vision", "prefix-2") == keys("vision", 0, 1)


@pytest.mark.parametrize(
    ("branch", "layers", "match"),
    [
        ("both", "all", r"branch='both': expected one of dual, vision, language, none"),
        ("dual", "hop-3", r"layers='hop-3': expected one of all, hop-odd, hop-even, prefix-K, suffix-K"),
        ("dual", "prefix-x", r"layers='prefix-x': expected one of all"),
        ("dual", "prefix-0", r"layers='prefix-0': K=0 must be in 1\.\.12"),
        ("dual", "suffix-13", r"layers='suffix-13': K=13 must be in 1\.\.12"),
        ("dual", [0, 1], r"layers=\[0, 1\]: layer numbers \[0\] do not exist; expected 1\.\.12"),
        ("dual", [13], r"layer numbers \[13\] do not exist"),
        ("dual", [], r"layers=\[\]: expected one of all"),
        ("dual", [True], r"expected one of all"),
        ("dual", 6, r"layers=6: expected one of all"),
    ],
)
def test_errors(branch, layers, match):
    with pytest.raises(ValueError, match=match):
        select_zo_units(CLIP_B16, branch, layers)


def test_bad_keys_and_missing_tower():
    with pytest.raises(ValueError, match=r"unit key \('text', 0\)"):
        select_zo_units([("text", 0)], "dual", "all")
    with pytest.raises(ValueError, match=r"layer index must be >= 0"):
        select_zo_units([("vision", -1)], "vision", "all")
    with pytest.raises(ValueError, match=r"branch='language': the model has no units in the language tower"):
        select_zo_units(keys("vision", 0, 1), "language", "all")


def test_parse_layers():
    assert parse_layers("all") == ("all", 0)
    assert parse_layers("Prefix-6") == ("prefix", 6)
    assert parse_layers("suffix-6") == ("suffix", 6)
    assert parse_layers([2, 4]) == [2, 4]
    assert parse_layers("1,3") == [1, 3]
