"""Benchmarks of runs/bench.py on the tiny CLIP: MoZO's memory/time table (through :mod:`runs.harness`) and
ConDU's storage figures; the harness itself; the studies' CLI (``study`` and the deprecated ``bench`` names)."""

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


def test_harness_times_every_iteration_of_a_real_template(tiny_model_factory):
    from avalanche.training import Naive

    from runs import harness

    model = tiny_model_factory("moe")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    strategy = harness.naive(model, torch.optim.SGD(model.trainable_parameters(), lr=0.1), batch_size=4,
                             device="cpu")
    assert isinstance(strategy, Naive)
    times = harness.run_steps(strategy, harness.repeated_minibatch(x, y, 3))
    assert len(times.ms) == 3 and all(t > 0 for t in times.ms)
    assert times.peak_bytes > 0 and times.mean_ms(1) == sum(times.ms[1:]) / 2
    assert strategy.clock.train_iterations == 3 and not any(isinstance(p, harness.StepTimer) for p in strategy.plugins)
    evaluated = harness.run_steps(strategy, harness.repeated_minibatch(x, y, 2), train=False)
    assert len(evaluated.ms) == 2


def test_study_cli_and_deprecated_bench_names(monkeypatch, capsys):
    import runs.studies.align as align
    import runs.studies.zo_precision as zo_precision
    from runs.__main__ import main

    monkeypatch.setattr(align, "main", lambda args: f"align {args.arch} {args.directions} {args.ratios}")
    monkeypatch.setattr(zo_precision, "zo_precision_table", lambda **kw: f"precision {kw['n_directions']}")
    assert main(["study", "align", "--directions", "3", "--ratios", "0.5"]) == 0
    assert capsys.readouterr().out.strip() == "align clip-tiny 3 0.5"
    assert main(["bench", "mozo-align", "--directions", "3", "--ratios", "0.5"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "align clip-tiny 3 0.5" and "study align" in out.err and "deprecated" in out.err
    assert main(["bench", "zo-precision", "--directions", "7"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "precision 7" and "study zo-precision" in out.err
