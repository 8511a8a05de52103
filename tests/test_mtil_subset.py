"""MTIL on a subset of its datasets (``stream.datasets``): order kept, the lr table's part used, unknown
names refused; ``data check`` follows the order and selection and tells complete / subset / missing /
corrupt; a run on a subset is marked in its provenance and in the results table."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures_streams import SHARED_DATA, fake_mtil_loader, write_fake_dtd, write_fake_mnist

import benchmarks  # noqa: F401  (installs the torchvision shim first)
from benchmarks import StreamContext
from benchmarks import data_check as dc
from benchmarks import mtil as mtil_mod
from benchmarks.mtil import ORDER_II, MTILConfig, build_mtil, check_mtil
from runs.__main__ import main
from runs.config import ConfigError, load_suite
from runs.report import format_table
from strategies.training import RecipePlugin, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
LORA_TABLE = {"Aircraft": 1e-3, "Caltech101": 5e-4, "CIFAR100": 2e-3, "DTD": 2e-3, "EuroSAT": 1.5e-4,
              "Flowers102": 1e-5, "Food101": 2e-3, "MNIST": 1e-3, "OxfordPet": 1.5e-4, "StanfordCars": 2e-3,
              "SUN397": 1.5e-3}  # condu_paper.yaml's condu-lora table
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "eurosat").is_dir() or not (SHARED_DATA / "caltech101").is_dir(),
                                  reason=f"real image subsets not found at {SHARED_DATA}")


def _ctx() -> StreamContext:
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(8), T.ToTensor()])
    return StreamContext(data_root="/nonexistent", train_transform=tf, eval_transform=tf, image_size=8, download=False)


# ---------------------------------------------------------------- selection
def test_selection_keeps_the_orders_sequence(monkeypatch):
    for name in mtil_mod.LOADERS:
        monkeypatch.setitem(mtil_mod.LOADERS, name, fake_mtil_loader(2))
    cfg = MTILConfig(order="II", datasets=["EuroSAT", "Caltech101", "StanfordCars"])
    assert check_mtil(cfg) == ["StanfordCars", "Caltech101", "EuroSAT"]  # order II's sequence, not the list's
    bench = build_mtil(cfg, _ctx())
    assert bench.experience_names == ["StanfordCars", "Caltech101", "EuroSAT"]
    assert bench.omitted_experiences == [n for n in ORDER_II if n not in cfg.datasets]
    assert bench.experience_classes == [[0, 1], [2, 3], [4, 5]]
    assert build_mtil(MTILConfig(order="II"), _ctx()).omitted_experiences == []


def _recipe_peak_lrs(plugin: RecipePlugin, n: int) -> list[float]:
    """The peak lr RecipePlugin sets for each of ``n`` experiences (a stand-in strategy)."""
    param = torch.nn.Parameter(torch.zeros(1))
    peaks = []
    for index in range(n):
        optimizer = torch.optim.SGD([param], lr=0.1)
        strategy = SimpleNamespace(optimizer=optimizer, experience=SimpleNamespace(current_experience=index),
                                   dataloader=[0, 1])
        plugin.before_training_exp(strategy)
        peaks.append(plugin.peak_lr)
    return peaks


def test_selection_uses_its_part_of_the_lr_table(monkeypatch):
    for name in mtil_mod.LOADERS:
        monkeypatch.setitem(mtil_mod.LOADERS, name, fake_mtil_loader(2))
    bench = build_mtil(MTILConfig(datasets=["EuroSAT", "Caltech101"]), _ctx())
    cfg = TrainConfig(lr=1e-3, lr_by_experience=dict(LORA_TABLE))
    plugin = RecipePlugin(cfg, bench.experience_names, bench.omitted_experiences)
    assert _recipe_peak_lrs(plugin, 2) == [LORA_TABLE["Caltech101"], LORA_TABLE["EuroSAT"]]
    with pytest.raises(ValueError, match=r"unknown experiences \['ImageNet'\]"):  # a typo is still refused
        RecipePlugin(TrainConfig(lr_by_experience={"ImageNet": 1e-3}), bench.experience_names,
                     bench.omitted_experiences)


SUITE = """\
    name: sub
    output_dir: {out}
    defaults:
      model: {{arch: clip-tiny, pretrained: none}}
      stream: {{name: mtil, order: II, datasets: {datasets}}}
    runs:
      - method: naive
"""


def test_unknown_dataset_name_is_refused_with_file_field_and_allowed_names(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(SUITE.format(out=tmp_path, datasets="[EuroSAT, ImageNet]")))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    text = str(info.value)
    assert str(path) in text and "stream" in text and "datasets" in text and "'ImageNet'" in text
    assert "allowed: " + ", ".join(ORDER_II) in text
    path.write_text(textwrap.dedent(SUITE.format(out=tmp_path, datasets="[EuroSAT, Caltech101]")))
    assert load_suite(path).runs[0].stream.cfg.datasets == ["EuroSAT", "Caltech101"]
    assert load_suite(path, ["stream.datasets=[DTD]"]).runs[0].stream.cfg.datasets == ["DTD"]


def test_shipped_lr_tables_accept_a_selection():
    suite = load_suite(ROOT / "runs" / "suites" / "condu_paper.yaml", ["stream.datasets=[EuroSAT, Caltech101]"])
    for run in suite.runs:
        assert run.stream.cfg.datasets == ["EuroSAT", "Caltech101"]
        selected, omitted = mtil_mod.stream_datasets(run.stream.cfg)
        RecipePlugin(run.train, selected, omitted)  # no "unknown experiences"


# ---------------------------------------------------------------- data check
def _eurosat(root: Path, per_class: int) -> None:
    from PIL import Image

    for k, cls in enumerate(mtil_mod.EUROSAT_FOLDERS):
        for i in range(per_class):
            folder = root / "eurosat" / "2750" / cls
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), color=(k * 20, i, 0)).save(folder / f"{cls}_{i}.jpg")


def test_data_check_tells_complete_subset_missing_corrupt(tmp_path, monkeypatch):
    monkeypatch.setitem(dc._MNIST_SIZES, "train", 20)  # "official" sizes the fake copies can reach
    monkeypatch.setitem(dc._MNIST_SIZES, "t10k", 20)
    write_fake_mnist(tmp_path, per_class=2)  # 20 samples per split: complete
    _eurosat(tmp_path, per_class=3)  # 30 of 27,000 images: subset
    write_fake_dtd(tmp_path)
    first = sorted((tmp_path / "dtd" / "dtd" / "images").rglob("*.jpg"))[0]
    first.write_bytes(b"not a jpeg")  # the first image is always decoded: corrupt
    cfg = MTILConfig(order="I", datasets=["MNIST", "EuroSAT", "DTD", "Caltech101"])
    verdicts = dc.dataset_verdicts(dc.check_stream("mtil", str(tmp_path), cfg))
    assert verdicts == {"mtil/Caltech101": "missing", "mtil/DTD": "corrupt", "mtil/EuroSAT": "subset",
                        "mtil/MNIST": "complete"}  # order I's sequence, only the selection
    summary = dc.data_summary("mtil", str(tmp_path), MTILConfig(datasets=["EuroSAT", "MNIST"]))
    assert summary == {"root": str(tmp_path), "status": "subset",
                       "datasets": {"mtil/EuroSAT": "subset", "mtil/MNIST": "complete"}}
    monkeypatch.setitem(dc._MNIST_SIZES, "train", 60_000)
    assert dc.dataset_verdicts(dc.check_stream("mtil", str(tmp_path), MTILConfig(datasets=["MNIST"]))) == {
        "mtil/MNIST": "subset"}
    truncated = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:100])
    assert dc.verdict_of(dc.check_dataset("mtil/MNIST", str(tmp_path))) == "corrupt"


def test_data_check_cli_follows_order_and_selection_and_prints_the_resolved_root(tmp_path, monkeypatch, capsys):
    _eurosat(tmp_path / "data", per_class=2)
    monkeypatch.chdir(tmp_path)
    args = ["data", "check", "mtil", "--data-root", "data", "--order", "II", "--datasets", "EuroSAT,Caltech101"]
    assert main(args) == 1  # Caltech101 is missing
    out = capsys.readouterr().out
    assert f"data root: {tmp_path / 'data'} (given as data)" in out
    assert "mtil/DTD" not in out and "mtil/Aircraft" not in out  # only the selection
    verdicts = [line.split()[:2] for line in out.splitlines() if line.startswith("mtil/") and "  " in line
                and line.split()[1] in dc.VERDICTS]
    assert verdicts == [["mtil/Caltech101", "missing"], ["mtil/EuroSAT", "subset"]]  # order II: Caltech101 first
    assert main(["data", "check", "mtil", "--data-root", "data", "--datasets", "EuroSAT"]) == 0
    assert "mtil/EuroSAT  subset" in capsys.readouterr().out
    assert main(["data", "check", "mtil", "--datasets", "EuroSAT,Imagenet"]) == 2
    assert "'Imagenet' not in the order; allowed: Aircraft" in capsys.readouterr().err
    assert main(["data", "check", "split_cifar100", "--datasets", "EuroSAT"]) == 2


def test_data_check_of_a_suite_uses_its_streams_and_data_roots(tmp_path, capsys):
    _eurosat(tmp_path / "d", per_class=2)
    path = tmp_path / "suite.yaml"
    suite = textwrap.dedent(SUITE.format(out=tmp_path, datasets="[EuroSAT]"))
    path.write_text(suite + f"    data_root: {tmp_path / 'd'}\n")  # the run's own data root
    assert main(["data", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "== stream mtil: EuroSAT" in out and f"data root: {tmp_path / 'd'}" in out and "mtil/EuroSAT  subset" in out


# ---------------------------------------------------------------- provenance and table
def test_results_table_marks_subset_runs():
    record = {"run_id": "naive-seed0", "name": "naive", "method": "naive", "stream": "mtil", "seed": 0,
              "protocol": "task", "pretrained": "openai", "arch": "ViT-B-16", "status": "finished",
              "metrics": {"avg": 0.5, "last": 0.5}, "accuracy_per_step": [0.5], "matrix": [[0.5]],
              "provenance": {"data": {"root": "/d", "status": "subset", "datasets": {"mtil/EuroSAT": "subset"}}}}
    text = format_table([record])
    assert "| mtil (subset) |" in text and "read a subset of the official data" in text
    complete = json.loads(json.dumps(record))
    complete["provenance"]["data"]["status"] = "complete"
    assert "(subset)" not in format_table([complete])


@needs_shared
def test_condu_suite_runs_on_the_shared_subset_and_is_marked(tmp_path, monkeypatch):
    """The shipped ConDU suite's fine-tuning run (lr table naming Aircraft and MNIST) on EuroSAT +
    Caltech101 from ../shared/data, with a relative data root."""
    from runs.runner import run_suite

    monkeypatch.chdir(SHARED_DATA.parent)
    overrides = ["model.arch=clip-tiny", "model.pretrained=none",
                 "stream.datasets=[EuroSAT, Caltech101]", "stream.shots=1", "train.iterations=1",
                 "train.batch_size=8", "train.warmup=0", "train.augment=false", "eval.zero_shot_row=false",
                 "train.eval_batch_size=128", "data_root=data", "download=false"]
    suite = load_suite(ROOT / "runs" / "suites" / "condu_paper.yaml", overrides, only=["finetune"])
    suite.output_dir = str(tmp_path)
    assert set(suite.runs[0].train.lr_by_experience) == {"Aircraft", "MNIST"}
    outcome = run_suite(suite, only=["finetune"])
    assert not outcome.failed, outcome.failed
    (record,) = outcome.records
    assert record["experience_names"] == ["Caltech101", "EuroSAT"]
    data = record["provenance"]["data"]
    assert data == {"root": str(SHARED_DATA), "status": "subset",
                    "datasets": {"mtil/Caltech101": "subset", "mtil/EuroSAT": "subset"}}
    sessions = json.loads((tmp_path / "condu_paper" / "finetune-seed0" / "provenance.json").read_text())["sessions"]
    assert sessions[-1]["data"] == data
    assert "| mtil (subset) |" in (tmp_path / "condu_paper" / "results.md").read_text()
