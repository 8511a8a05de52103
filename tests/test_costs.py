"""What a run costs (runs.costs, docs/metrics.md#cost): trainable parameters against hand-computed counts
(frozen parameters never counted), extra state per method, peak memory of a toy method's known allocation,
times that add up and survive a resume, and the cost table of a finished tiny suite."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Replay

from runs import harness
from runs.costs import CostPlugin, count_trainable, extra_state_of_strategy, merge_sessions

ROOT = Path(__file__).resolve().parents[1]
X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 1, 2, 0, 1, 2])
WIDTH, MLP, LAYERS = 64, 256, 2  # clip-tiny: width 64, MLP 4·64, 2 blocks per tower (model_configs/clip-tiny.json)

# Hand-computed trainable scalars of clip-tiny's units, per block, both towers (2 × 2 blocks):
ADAPTER = WIDTH * 16 + 16 + 16 * WIDTH + WIDTH  # down (64→16, bias) + up (16→64, bias) = 2,128
MOE = 2 * ADAPTER + 2 * WIDTH * 2  # two expert adapters + w_gate and w_noise (64 × 2 each) = 4,512
LORA = (4 * WIDTH + MLP * 4) + (4 * MLP + WIDTH * 4)  # rank 4 on c_fc (64→256) and c_proj (256→64) = 2,560
BLOCK = 2 * WIDTH + (WIDTH * 3 * WIDTH + 3 * WIDTH) + (WIDTH * WIDTH + WIDTH) + 2 * WIDTH \
    + (WIDTH * MLP + MLP) + (MLP * WIDTH + WIDTH)  # ln_1, attn in/out, ln_2, c_fc, c_proj = 49,984
# vision: patch conv (3·8·8 → 64, no bias), class and positional embeddings (16 patches + 1), ln_pre, blocks,
# ln_post, projection; language: token (49,408 × 64) and positional (32 × 64) embeddings, blocks, ln_final, projection
VISION = 3 * WIDTH * 8 * 8 + WIDTH + (16 + 1) * WIDTH + 2 * WIDTH + LAYERS * BLOCK + 2 * WIDTH + WIDTH * WIDTH
LANGUAGE = 49408 * WIDTH + 32 * WIDTH + LAYERS * BLOCK + 2 * WIDTH + WIDTH * WIDTH
HAND = {"adapter": 4 * ADAPTER, "moe": 4 * MOE, "lora": 4 * LORA, "full": VISION + LANGUAGE}
UNIT_OPTIONS = {"adapter": {"bottleneck": 16}, "moe": {"bottleneck": 16, "experts": 2, "top_k": 2},
                "lora": {"lora_rank": 4}, "full": {}}


def _train(model, plugins=(), *, strategy=None, steps=2) -> CostPlugin:
    """Avalanche's Naive (or ``strategy``) with the cost plugin last, ``steps`` iterations on (X, Y). The
    optimizer holds every parameter of the model, frozen ones included (as Avalanche's reset puts them)."""
    cost = CostPlugin("cpu")
    if strategy is None:
        strategy = harness.naive(model, torch.optim.SGD(model.parameters(), lr=0.01), batch_size=len(X),
                                 device="cpu", plugins=[*plugins, cost])
    else:
        strategy.plugins.append(cost)
    torch.manual_seed(0)
    harness.run_steps(strategy, harness.repeated_minibatch(X, Y, steps))
    cost.strategy = strategy
    cost.close()
    return cost


def _counts(model, cost: CostPlugin) -> dict:
    return count_trainable(model, cost.fo_names, cost.zo_names)


@pytest.mark.parametrize("kind", ["adapter", "moe", "lora", "full"])
def test_trainable_parameters_per_unit_kind_are_the_hand_counts(tiny_model_factory, kind):
    model = tiny_model_factory(kind, **UNIT_OPTIONS[kind])
    counts = _counts(model, _train(model))
    assert counts["trainable_params"] == HAND[kind]  # a frozen backbone parameter would add thousands
    assert counts["trainable_params_fo"] == HAND[kind] and counts["trainable_params_zo"] == 0
    by_tower = counts["trainable_params_by_tower"]
    if kind == "full":
        assert by_tower == {"vision": VISION, "language": LANGUAGE}
    else:
        assert by_tower == {"vision": HAND[kind] // 2, "language": HAND[kind] // 2}
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > 0 and counts["trainable_params"] + frozen == sum(p.numel() for p in model.parameters())


def test_mozo_counts_its_zo_and_fo_units_per_tower(tiny_model_factory):
    from strategies.mozo import MoZOConfig, MoZOPlugin

    model = tiny_model_factory("adapter", bottleneck=16)
    counts = _counts(model, _train(model, [MoZOPlugin(MoZOConfig(branch="vision", layers="all"), seed=1)]))
    assert counts["trainable_params_zo"] == 2 * ADAPTER  # the vision units, updated by the ZO step
    assert counts["trainable_params_fo"] == 2 * ADAPTER  # the language units, by the optimizer
    assert counts["trainable_params"] == 4 * ADAPTER
    assert counts["trainable_params_by_tower"] == {"vision": 2 * ADAPTER, "language": 2 * ADAPTER}
    model = tiny_model_factory("adapter", bottleneck=16)
    dual = _counts(model, _train(model, [MoZOPlugin(MoZOConfig(branch="dual", layers="all"), seed=1)]))
    assert (dual["trainable_params_zo"], dual["trainable_params_fo"]) == (4 * ADAPTER, 0)


def _condu(model):
    from strategies.condu import ConDUPlugin

    plugin = ConDUPlugin(model, prototype_images=6)
    return plugin, _train(model, [plugin])


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_condu_counts_the_model_or_its_lora_and_stores_triggers_and_prototypes(tiny_model_factory, kind):
    model = tiny_model_factory(kind, **UNIT_OPTIONS[kind])
    plugin, cost = _condu(model)
    assert _counts(model, cost)["trainable_params"] == HAND[kind]
    extra = extra_state_of_strategy(cost.strategy)
    trainable = [p for p in model.parameters() if p.requires_grad]
    mask = sum(math.ceil(p.numel() / 8) for p in trainable)  # one bit per trainable scalar, per tensor
    assert extra["condu_triggers"] == mask + 4  # one task: its mask bits and a float32 rescaler
    assert extra["condu_prototypes"] == 3 * 64 * 4  # 3 classes × embed_dim 64, float32
    assert extra["condu_theta0"] == extra["condu_unified"] == 4 * HAND[kind]  # θ⁰ and U: float32 copies
    assert sum(extra.values()) == plugin.storage()["total"]
    assert cost.extra == extra


def test_zero_shot_updates_nothing_and_naive_stores_nothing(tiny_model_factory):
    from strategies.baselines import ZeroShot

    model = tiny_model_factory("adapter", bottleneck=16)
    zero_shot = ZeroShot(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         criterion=torch.nn.CrossEntropyLoss(), train_mb_size=6, device="cpu",
                         evaluator=harness.silent_evaluator())
    cost = _train(model, strategy=zero_shot)
    assert _counts(model, cost)["trainable_params"] == 0 and cost.images == 0
    naive = _train(model)
    assert extra_state_of_strategy(naive.strategy) == {} and naive.extra == {}


def test_replay_reports_its_buffer(tiny_model_factory):
    model = tiny_model_factory("adapter", bottleneck=16)
    replay = Replay(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    criterion=torch.nn.CrossEntropyLoss(), mem_size=4, train_mb_size=6, device="cpu",
                    evaluator=harness.silent_evaluator())
    cost = _train(model, strategy=replay)
    assert extra_state_of_strategy(replay) == {"replay_buffer": 4 * 3 * 32 * 32 * 4}  # 4 float32 images
    assert cost.extra == {"replay_buffer": 4 * 3 * 32 * 32 * 4}


def test_sessions_merge_times_summed_and_peaks_maxed():
    first = {"wall_time_s": 10.0, "train_time_s": 6.0, "eval_time_s": 3.0, "train_images": 600,
             "peak_memory_bytes": 500, "peak_memory_per_experience_bytes": {"0": 500},
             "memory_measure": "cuda_max_allocated"}
    second = {"wall_time_s": 5.0, "train_time_s": 3.0, "eval_time_s": 1.0, "train_images": 300,
              "peak_memory_bytes": 200, "peak_memory_per_experience_bytes": {"1": 200},
              "memory_measure": "cuda_max_allocated"}
    merged = merge_sessions([first, second])
    assert (merged["wall_time_s"], merged["train_time_s"], merged["eval_time_s"]) == (15.0, 9.0, 4.0)
    assert merged["train_images"] == 900 and merged["train_images_per_s"] == 100.0
    assert merged["peak_memory_bytes"] == 500 and merged["peak_memory_per_experience_bytes"] == [500, 200]
    assert merged["device_hours"] == 15.0 / 3600 and merged["sessions"] == 2


# ---------------------------------------------------------------------- a run of a toy method
ALLOCATION = 96 * 2**20  # bytes the toy method holds while it trains each experience


class _Allocates(SupervisedPlugin):
    """Holds a written ALLOCATION-byte tensor through each experience's training."""

    def __init__(self) -> None:
        super().__init__()
        self.block: torch.Tensor | None = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.block = torch.ones(ALLOCATION // 4)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.block = None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _toy_suite(tmp_path, monkeypatch, output="outputs"):
    from avalanche.training import Naive

    from runs.config import load_suite
    from strategies.baselines import NoOptions, _common
    from strategies.registry import METHODS, MethodSpec

    def build(model, cfg, *, train, plugins, evaluator, device, criterion, **_):
        return Naive(**_common(model, train, [*plugins, _Allocates()], evaluator, device, criterion))

    monkeypatch.setitem(METHODS, "costtoy", MethodSpec(NoOptions, build))
    text = (ROOT / "runs" / "suites" / "smoke.yaml").read_text()
    text = text.split("runs:")[0] + "runs:\n  - method: zeroshot\n  - method: costtoy\n"
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    suite = load_suite(path, overrides=["stream.n_experiences=2", "stream.n_classes=4", "train.epochs=1"])
    suite.output_dir = str(tmp_path / output)
    return suite


def _free_heap_left_by_earlier_work() -> torch.Tensor:
    """Leave ~2 × ALLOCATION of freed but resident memory inside the C heap, as a long process (a serial suite,
    a long pytest run) does: 1 MiB blocks sit below the mmap threshold once one was freed, and a live block
    above them keeps the heap from shrinking. Returns that block (hold it while the run runs)."""
    first = torch.ones(2**18)
    del first  # once a 1 MiB block is freed, glibc serves 1 MiB blocks from the heap
    blocks = [torch.ones(2**18) for _ in range(2 * ALLOCATION // 2**20)]
    pin = torch.ones(16)
    del blocks
    return pin


def test_the_cpu_peak_shows_an_allocation_that_reuses_memory_freed_earlier_in_the_process():
    from runs.costs import _RSSSampler

    pin = _free_heap_left_by_earlier_work()  # reused as it is, the allocation would not raise resident memory
    sampler = _RSSSampler(interval_s=60.0)  # no background samples: take() alone reads the peak
    try:
        block = torch.ones(ALLOCATION // 4)
        assert sampler.take() >= ALLOCATION
        del block
    finally:
        sampler.stop()
        del pin


class _Interrupt(KeyboardInterrupt):
    pass


def test_a_run_records_its_cost_and_a_resume_adds_up(tmp_path, monkeypatch):
    from runs.runner import RunSession

    suite = _toy_suite(tmp_path, monkeypatch)
    run = next(r for r in suite.runs if r.name == "costtoy")
    original = RunSession._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        monkeypatch.setattr(RunSession, "_save_checkpoint", original)
        raise _Interrupt("simulated interruption after experience 0")

    monkeypatch.setattr(RunSession, "_save_checkpoint", save_then_crash)
    with pytest.raises(_Interrupt):
        RunSession(suite, run, 0).execute()
    record = RunSession(suite, run, 0).execute()
    folder = Path(suite.output_dir) / suite.name / "costtoy-seed0"
    sessions = [s["cost"] for s in json.loads((folder / "provenance.json").read_text())["sessions"]]
    cost = record["cost"]
    assert len(sessions) == 2 and cost["sessions"] == 2
    assert cost["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in sessions))
    assert record["wall_time_s"] == cost["wall_time_s"]
    assert cost["train_time_s"] == pytest.approx(sum(s["train_time_s"] for s in sessions))
    assert cost["train_time_s"] + cost["eval_time_s"] <= cost["wall_time_s"]
    assert cost["peak_memory_bytes"] == max(s["peak_memory_bytes"] for s in sessions)
    assert cost["peak_memory_bytes"] >= ALLOCATION  # the toy method's tensor, held while it trained
    assert all(p >= ALLOCATION for p in cost["peak_memory_per_experience_bytes"])  # one per experience
    assert cost["train_images"] == 2 * 4 * 32 // 2  # 2 experiences × 2 classes × 32 images, one epoch
    assert cost["trainable_params"] == 4 * ADAPTER  # the smoke suite's adapters: bottleneck 16
    assert cost["machine"]["device_type"] == "cpu" and cost["machine"]["precision"] == "fp32"
    assert json.loads((folder / "metrics.json").read_text())["cost"] == cost


def test_the_cost_table_renders_for_a_finished_tiny_suite_and_is_absent_for_old_runs(tmp_path, monkeypatch):
    from runs import report as rep
    from runs.costs import format_cost_table
    from runs.runner import run_suite

    suite = _toy_suite(tmp_path, monkeypatch)
    records = run_suite(suite).records
    suite_dir = Path(suite.output_dir) / suite.name
    table = (suite_dir / "results.md").read_text()
    assert "**Cost**" in table and "| costtoy |" in table.split("**Cost**")[1]
    assert "cpu" in table.split("**Cost**")[1].lower() and "fp32" in table.split("**Cost**")[1]
    rows = list(csv.DictReader((suite_dir / "runs.csv").open()))
    toy = next(r for r in rows if r["name"] == "costtoy")
    assert int(toy["trainable_params"]) == 4 * ADAPTER and float(toy["peak_memory_bytes"]) >= ALLOCATION
    groups = list(csv.DictReader((suite_dir / "results.csv").open()))
    assert float(next(g for g in groups if g["name"] == "costtoy")["trainable_params_mean"]) == 4 * ADAPTER
    # runs written before costs were recorded: no cost table, no cost columns (absent, not zero)
    old = [{k: v for k, v in r.items() if k != "cost"} for r in records]
    assert format_cost_table(rep.summarize_runs(old)) == ""
    out = tmp_path / "old"
    rep.write_results(old, out)
    assert "**Cost**" not in (out / "results.md").read_text()
    header = next(csv.reader((out / "runs.csv").open()))
    assert "trainable_params" not in header and "peak_memory_bytes" not in header
    # one old run beside a new one: its cells are empty, not 0
    mixed = [old[0], *records[1:]]
    rep.write_results(mixed, tmp_path / "mixed")
    mixed_rows = {r["name"]: r for r in csv.DictReader((tmp_path / "mixed" / "runs.csv").open())}
    assert mixed_rows[old[0]["name"]]["trainable_params"] == ""


def _summary(peak_bytes: float, hours: float, machine: dict) -> dict:
    record = {"cost": {"machine": machine}}
    return {"name": "toy", "method": "toy", "stream": "s", "reference": "paper/setting/row", "cost_seeds": 1,
            "peak_memory_bytes_mean": peak_bytes, "device_hours_mean": hours, "records": [record],
            "cost_machines": ["H200 (cuda), bf16"]}


def test_published_cost_is_compared_only_on_the_same_machine_class():
    from runs.costs import compare_cost, format_cost_table
    from runs.references import Reference

    machine = {"device_type": "cuda", "device_model": "NVIDIA H200", "precision": "bf16"}

    def references(published_machine):
        cost = {"peak_memory_gb": 40.0, "device_hours": 10.0, "table": "cost table", "mark": "paper"}
        if published_machine is not None:
            cost["machine"] = published_machine
        return {"paper/setting/row": Reference("paper/setting/row", "row", {"avg": 50.0}, "paper", "t", "paper",
                                               cost=cost)}

    same = compare_cost(_summary(43e9, 12.0, machine), references(dict(machine)))
    assert same.reason == "" and same.rows == (("peak_memory_gb", 43.0, 40.0, pytest.approx(3.0)),
                                               ("device_hours", 12.0, 10.0, 2.0))
    other = compare_cost(_summary(43e9, 12.0, machine), references(machine | {"device_model": "NVIDIA A100"}))
    assert not other.rows and "device_model is NVIDIA H200, the source used NVIDIA A100" in other.reason
    other = compare_cost(_summary(43e9, 12.0, machine), references(machine | {"precision": "fp32"}))
    assert not other.rows and "precision" in other.reason
    unstated = compare_cost(_summary(43e9, 12.0, machine), references(None))
    assert not unstated.rows and "states no machine" in unstated.reason
    table = format_cost_table([_summary(43e9, 12.0, machine)], references(dict(machine)))
    assert "40 GB, 10 h (measured − published: +3.00 GB, +2.00 h)" in table and "H200 (cuda), bf16" in table
    shipped = compare_cost(_summary(43e9, 12.0, machine) | {"reference": "zscl/mtil-I/zscl"}, _shipped())
    assert shipped.published["peak_memory_gb"] == 43.0 and shipped.published["device_hours"] == 47.0
    assert not shipped.rows  # the notes state no machine: shown, never compared


def _shipped():
    from runs.references import load_references

    return load_references()


def test_report_cost_prints_the_cost_table_alone(tmp_path, monkeypatch, capsys):
    from runs.__main__ import main
    from runs.runner import run_suite

    suite = _toy_suite(tmp_path, monkeypatch)
    run_suite(suite)
    suite_dir = Path(suite.output_dir) / suite.name
    capsys.readouterr()
    assert main(["report", str(suite_dir), "--cost"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**Cost**") and "| costtoy |" in out and "Forgetting" not in out
