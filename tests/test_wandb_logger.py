"""WandBLogger in offline mode: what it writes, and that it works inside a real Avalanche loop.

wandb 0.31 offline writes no ``wandb-summary.json``: history, summary and config live in the run's
``run-<id>.wandb`` transaction log (LevelDB log framing around ``wandb_internal_pb2.Record``
protobufs), which ``_read_offline_run`` decodes.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import matplotlib.figure
import PIL.Image
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import strategies._torchvision_compat  # noqa: F401  (before avalanche: makes torchvision importable)

# isort: split
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metric_results import AlternativeValues, MetricValue
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2

from runs.wandb_logger import STEP_METRIC, WandBLogger

_BLOCK = 32768  # LevelDB log block size used by wandb's transaction log
_HEADER = 7  # crc32 (4) + length (2) + chunk type (1)
_FULL, _FIRST, _LAST = 1, 2, 4


@pytest.fixture(autouse=True)
def _hermetic_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path))


def _records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, buf, out = 7, b"", []
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer too short for a header: zero padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 or pos + _HEADER + length > len(data):  # padding, or a chunk still being written
            break
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        buf = chunk if kind in (_FULL, _FIRST) else buf + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def _finished_records(run_dir: Path, timeout_s: float = 20.0) -> list[wandb_internal_pb2.Record]:
    """The run's records once its ``exit`` record is on disk.

    ``run.finish()`` can return before wandb-core has flushed the offline log (seen: a file holding
    only its 7-byte header right after finish), so poll until the closing ``exit`` record appears.
    """
    (log_file,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = _records(log_file)
        except DecodeError:  # a record cut mid-write
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{log_file} has no exit record after {timeout_s} s")
        time.sleep(0.05)


def _read_offline_run(run_dir: Path) -> tuple[list[dict], dict, dict]:
    """(history rows, final summary, config) of a finished offline run folder."""
    history, summary, config = [], {}, {}
    for record in _finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind in ("run", "config"):  # the initial config travels in the run record
            updates = record.run.config.update if kind == "run" else record.config.update
            for item in updates:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, summary, config


def _logger(tmp_path: Path, **overrides) -> WandBLogger:
    kwargs = dict(project="clip-cl-test", group="g", name="unit", tags=["test"], config={"lr": 0.1},
                  mode="offline", dir=tmp_path)
    return WandBLogger(**{**kwargs, **overrides})


class _MV:
    """Stand-in origin for MetricValue (loggers never touch it)."""


def test_offline_run_records_metrics_with_non_monotonic_x_plot(tmp_path: Path) -> None:
    logger = _logger(tmp_path, run_id="unit01")
    # Avalanche order: training metrics at iteration 10, then eval metrics at the same and lower x.
    logger.log_single_metric("Loss_Epoch/train_phase/train_stream", 0.9, 10)
    logger.log_metrics([
        MetricValue(_MV(), "Top1_Acc_Exp/eval_phase/test_stream/Exp000", 0.5, 10),
        MetricValue(_MV(), "Top1_Acc_Exp/eval_phase/test_stream/Exp001", 0.25, 10),
        MetricValue(_MV(), "Top1_Acc_Stream/eval_phase/test_stream", 0.375, 3),
        MetricValue(_MV(), "Per_class", {0: 0.1, 1: 0.2}, 3),
        MetricValue(_MV(), "alt", AlternativeValues("text", torch.tensor(0.75)), 3),
        MetricValue(_MV(), "skipped_string", "hello", 3),
    ])
    logger.log_single_metric("Loss_Epoch/train_phase/train_stream", torch.tensor(0.7), 10)
    logger.log_single_metric("Loss_Epoch/train_phase/train_stream", 0.6, 2)
    logger.log_single_metric("matrix", torch.tensor([[0.9, 0.1], [0.8, 0.7]]), 20)
    logger.log_single_metric("hist", torch.arange(6.0), 20)
    logger.log_single_metric("img", AlternativeValues(PIL.Image.new("RGB", (4, 4)), torch.zeros(2, 2)), 20)
    figure = matplotlib.figure.Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1])
    logger.log_single_metric("fig", figure, 20)
    logger.log_accuracy_matrix([[0.9, None], [0.8, 0.7]], ["exp0", "exp1"], ["exp0", "exp1"])
    logger.log_summary({"final/avg": 0.8, "final/last": 0.75})
    run_dir = logger.run_dir
    logger.finish()
    logger.finish()  # idempotent

    assert run_dir.parent == tmp_path / "wandb" and run_dir.name.startswith("offline-run-")
    assert run_dir.name.endswith("-unit01")
    history, summary, config = _read_offline_run(run_dir)
    losses = [(r[STEP_METRIC], r["Loss_Epoch/train_phase/train_stream"])
              for r in history if "Loss_Epoch/train_phase/train_stream" in r]
    assert losses == [(10, 0.9), (10, pytest.approx(0.7)), (2, 0.6)]  # nothing dropped
    (eval_row,) = [r for r in history if "Top1_Acc_Exp/eval_phase/test_stream/Exp000" in r]
    assert eval_row[STEP_METRIC] == 10 and eval_row["Top1_Acc_Exp/eval_phase/test_stream/Exp001"] == 0.25
    (low_row,) = [r for r in history if "Top1_Acc_Stream/eval_phase/test_stream" in r]
    assert low_row[STEP_METRIC] == 3 and low_row["Per_class/1"] == 0.2 and low_row["alt"] == 0.75
    assert not any("skipped_string" in r for r in history)
    assert summary["final/avg"] == 0.8 and summary["final/last"] == 0.75
    # Media values are stored flattened under nested keys: "<name>/_type", "<name>/nrows", ...
    assert summary["matrix/_type"] == "table-file" and summary["hist/_type"] == "histogram"
    assert summary["img/_type"] == "image-file" and summary["fig/_type"] == "image-file"
    assert summary["accuracy_matrix/nrows"] == 2 and summary["accuracy_matrix/ncols"] == 3
    assert config["lr"] == 0.1
    tables = list((run_dir / "files" / "media" / "table").glob("accuracy_matrix_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["trained_on", "exp0", "exp1"]
    assert table["data"] == [["exp0", 0.9, None], ["exp1", 0.8, 0.7]]


def test_invalid_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        _logger(tmp_path, mode="dryrun")
    with pytest.raises(ValueError, match="run_id"):
        _logger(tmp_path, resume=True)


def test_every_argument_is_optional_like_wandb_init() -> None:
    logger = WandBLogger()  # project, name, mode, dir ... : wandb.init's defaults and WANDB_* variables
    assert logger.run.settings.mode == "offline"  # WANDB_MODE=offline (fixture)
    assert logger.run_dir.parent.name == "wandb" and logger.run_dir.name.startswith("offline-run-")
    logger.log_single_metric("a", 1.0, 1)
    run_dir = logger.run_dir
    logger.finish()
    history, _, config = _read_offline_run(run_dir)
    assert [r["a"] for r in history if "a" in r] == [1] and not {k for k in config if not k.startswith("_")}


def test_wandb_init_arguments_pass_through(tmp_path: Path) -> None:
    logger = WandBLogger("proj", "a-name", entity="my-team", id="given01", notes="why", job_type="train",
                         dir=tmp_path / "new" / "folder")
    run = logger.run
    assert (run.project, run.name, run.entity, run.id, run.notes, run.job_type) == (
        "proj", "a-name", "my-team", "given01", "why", "train")
    assert logger.run_dir.parent == tmp_path / "new" / "folder" / "wandb"
    logger.finish()
    assert WandBLogger(run_id="same01", id="same01", dir=tmp_path).run_id == "same01"  # the runner's keyword
    with pytest.raises(ValueError, match="id='a1' and run_id='b2' differ"):
        WandBLogger(id="a1", run_id="b2", dir=tmp_path)


def test_resume_continues_same_run_id(tmp_path: Path) -> None:
    first = _logger(tmp_path, run_id="resume01")
    first.log_single_metric("a", 1.0, 1)
    first.finish()
    second = _logger(tmp_path, run_id="resume01", resume=True)
    assert second.run_id == "resume01"
    second.log_single_metric("a", 2.0, 2)
    second_dir = second.run_dir
    second.finish()
    # Offline, each session gets its own folder (same id; "-1" appended on a name clash);
    # `wandb sync` of both folders continues one W&B run.
    assert len(list((tmp_path / "wandb").glob("offline-run-*-resume01*"))) == 2
    history, _, _ = _read_offline_run(second_dir)
    assert [(r[STEP_METRIC], r["a"]) for r in history if "a" in r] == [(2, 2.0)]


class _RandomTensors(Dataset):
    """Random 8-feature inputs with integer ``.targets`` (Avalanche reads them for class splits)."""

    def __init__(self, n: int, n_classes: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=gen)  # (N, 8)
        self.targets = [i % n_classes for i in range(n)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], self.targets[index]


def test_avalanche_naive_loop_end_to_end(tmp_path: Path) -> None:
    benchmark = nc_benchmark(_RandomTensors(64, 4, 0), _RandomTensors(32, 4, 1), n_experiences=2,
                             task_labels=False, seed=0)
    logger = _logger(tmp_path, name="naive", run_id="aval01")
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loss_metrics(epoch=True),
                                 loggers=[logger])
    model = nn.Linear(8, 4)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=1, eval_mb_size=32,
                     evaluator=evaluator, device="cpu")
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)
    run_dir = logger.run_dir
    logger.finish()

    history, summary, _ = _read_offline_run(run_dir)
    stream_key = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
    stream_rows = [r for r in history if stream_key in r]
    assert len(stream_rows) == 2  # one per eval call: none dropped
    assert summary[stream_key] == evaluator.get_last_metrics()[stream_key]
    xs, values = evaluator.get_all_metrics()[stream_key]  # what Avalanche published, in order
    assert [(r[STEP_METRIC], r[stream_key]) for r in stream_rows] == list(zip(xs, values, strict=True))
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001" in summary
    assert "Loss_Epoch/train_phase/train_stream/Task000" in summary
    assert summary["trainer/experience"] == 2
