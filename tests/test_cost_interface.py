"""strategies.cost: tensor bytes, merged extra-state reports, distinct parameter counts (hand-computed)."""

from __future__ import annotations

import torch

from strategies.cost import count_parameters, extra_state_of, tensor_bytes


def test_tensor_bytes_counts_nested_tensors_once() -> None:
    a = torch.zeros(3, 4)  # 48 bytes (float32)
    b = torch.zeros(5, dtype=torch.float64)  # 40 bytes
    c = torch.zeros(2, dtype=torch.uint8)  # 2 bytes
    assert tensor_bytes({"a": a, "rest": [b, (c, a)]}) == 48 + 40 + 2
    assert tensor_bytes(torch.nn.Linear(3, 2)) == (6 + 2) * 4
    assert tensor_bytes({}) == 0


def test_extra_state_of_merges_reporting_parts_only() -> None:
    class Reports:
        def __init__(self, sizes: dict[str, int]) -> None:
            self.sizes = sizes

        def extra_state(self) -> dict[str, int]:
            return self.sizes

    merged = extra_state_of([Reports({"buffer": 10}), object(), Reports({"buffer": 5, "teacher": 7})])
    assert merged == {"buffer": 15, "teacher": 7}
    assert extra_state_of([object()]) == {}


def test_count_parameters_counts_a_shared_tensor_once() -> None:
    w = torch.nn.Parameter(torch.zeros(4, 3))
    b = torch.nn.Parameter(torch.zeros(4))
    assert count_parameters([w, b, w]) == 16
