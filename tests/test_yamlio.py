"""The bounded YAML loader (runs/yamlio.py): hostile inputs are refused in milliseconds, one line each."""

from __future__ import annotations

import time

import pytest

from runs.yamlio import YAMLBudgetError, loads


@pytest.mark.parametrize("text", [
    "defaults: &d {epochs: 1, x: *d}\n",
    "a: &l [1, 2, *l]\n",
    "a: &m {b: {c: [*m]}}\n",
])
def test_recursive_alias_is_refused_quickly(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(YAMLBudgetError, match="recursive alias"):
        loads(text)
    assert time.perf_counter() - start < 1.0


def test_shared_non_recursive_alias_is_accepted() -> None:
    data = loads("base: &b {lr: 0.1}\nruns: [{train: *b}, {train: *b}]\n")
    assert data["runs"][0]["train"] == data["runs"][1]["train"] == {"lr": 0.1}
