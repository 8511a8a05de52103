"""Benchmarks of runs/bench.py on the tiny CLIP: MoZO's memory/time table and ConDU's storage figures."""

from __future__ import annotations

import math

import torch

from runs.bench import CONFIGS, bench_mozo, condu_storage, condu_storage_figures
from strategies.clip import ModelConfig, UnitsConfig, build_clip, unit_parameters


def _rows(table: str) -> dict[str, list[str]]:
    """configuration -> its cells, from the Markdown table."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in CONFIGS:
            rows[cells[0]] = cells[1:]
    return rows


def test_bench_mozo_table_has_every_configuration_with_inference_as_reference():
    table = bench_mozo(arch="clip-tiny", steps=1, device="cpu", isolate=False, warmup=1)
    rows = _rows(table)
    assert list(rows) == list(CONFIGS)
    for name, cells in rows.items():
        numbers = [float(c) for c in cells[:5]]  # peak, ×, above model, ms, ×
        assert all(math.isfinite(v) and v >= 0 for v in numbers), name
        assert numbers[0] > 0 and numbers[3] > 0, name
    assert rows["inference"][1] == "1.00" and rows["inference"][4] == "1.00"
    # the partitions: full FO has no ZO unit, Dual ZO no FO unit, the branch-wise ones split the units
    fo_zo = {name: cells[5].split(" / ") for name, cells in rows.items()}
    assert fo_zo["inference"] == ["0", "0"]
    assert fo_zo["full FO"][1] == "0" and fo_zo["Dual ZO"] == ["0", fo_zo["full FO"][0]]
    for name in ("Vision ZO", "Language ZO", "MoZO"):
        assert "0" not in fo_zo[name], name


def test_bench_mozo_cpu_default_runs_a_worker_subprocess():
    table = bench_mozo(arch="clip-tiny", steps=1, device="cpu", configs=("inference",), warmup=1)
    assert "a fresh process per configuration" in table
    cells = _rows(table)["inference"]
    assert float(cells[0]) > 50  # a whole Python + torch process
    assert cells[1] == "1.00" and cells[4] == "1.00"


def test_condu_storage_mask_bytes_are_one_bit_per_lora_parameter():
    torch.manual_seed(0)
    model, _, _ = build_clip(ModelConfig(arch="clip-tiny", pretrained="none", units=UnitsConfig(kind="lora")))
    lora = list(unit_parameters(model.units))
    expected_mask = sum(math.ceil(p.numel() / 8) for p in lora)
    numel = sum(p.numel() for p in lora)
    embed_dim = model.clip.text_projection.shape[1]

    fig = condu_storage_figures(arch="clip-tiny", units="lora", classes_per_task=2, tasks=3)
    assert len(fig["per_task"]) == 3
    task = fig["per_task"][0]
    assert task == {"mask": expected_mask, "rescaler": 4, "prototypes": 2 * embed_dim * 4,
                    "total": expected_mask + 4 + 2 * embed_dim * 4}
    assert fig["shared"] == 2 * 4 * numel
    assert fig["total"] == fig["shared"] + 3 * task["total"]

    table = condu_storage(arch="clip-tiny", units="lora", classes_per_task=2, tasks=3)
    assert f"| per task: mask (1 bit per trainable parameter) | {expected_mask:,} |" in table
    assert f"| total ConDU storage (3 tasks) | {fig['total']:,} |" in table
