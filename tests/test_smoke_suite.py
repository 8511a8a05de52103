"""End to end: the smoke suite runs offline, writes its outputs, resumes, and Naive learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from runs.__main__ import main
from runs.config import load_suite
from runs.report import load_run_records
from runs.runner import RunSession, run_suite

ROOT = Path(__file__).resolve().parents[1]


def _smoke(tmp_path, overrides=()):
    suite = load_suite(ROOT / "runs" / "suites" / "smoke.yaml", overrides=list(overrides))
    suite.output_dir = str(tmp_path / "outputs")
    return suite


def test_smoke_suite_end_to_end(tmp_path, capsys):
    """The smoke suite through the CLI as a user runs it (docs/quickstart.md): short console, outputs, numbers."""
    code = main(["run", str(ROOT / "runs" / "suites" / "smoke.yaml"), "--output-dir", str(tmp_path / "outputs")])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    suite_dir = tmp_path / "outputs" / "smoke"
    records = load_run_records(suite_dir)
    assert sorted(r["name"] for r in records) == ["condu", "ewc", "lwf", "mozo", "naive", "replay", "zeroshot"]
    # the console is short: one line per experience, Avalanche's metric dump and warnings go to log.txt
    lines = (out + err).splitlines()
    assert len(lines) <= 150, len(lines)
    assert "Top1_Acc_Stream" not in out + err and "DeprecationWarning" not in out + err
    assert sum("exp 5/5  acc_seen" in line for line in lines) == len(records)
    log = (suite_dir / "naive-seed0" / "log.txt").read_text()
    assert "Top1_Acc_Stream/eval_phase/test_stream" in log and "exp 5/5" in log
    for name in ("results.md", "results.csv", "runs.csv", "accuracy_per_step.png"):
        assert (suite_dir / name).stat().st_size > 0, name
    table = (suite_dir / "results.md").read_text()
    assert "| naive |" in table and "Forgetting" in table
    for record in records:
        run = suite_dir / f"{record['name']}-seed0"
        assert (run / "config.yaml").exists() and (run / "matrix.csv").exists()
        assert not (run / "checkpoint.pt").exists()  # removed once the run finished
        assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run"
        matrix = np.asarray(record["matrix"])
        assert matrix.shape == (5, 5) and np.all((matrix >= 0) & (matrix <= 1))
        # Avg is the mean of the per-step accuracy on everything seen so far; Last is its final value
        assert np.mean(record["accuracy_per_step"]) == pytest.approx(record["metrics"]["avg"])
        assert record["accuracy_per_step"][-1] == pytest.approx(record["metrics"]["last"])
    by_name = {r["name"]: r for r in records}
    # zero-shot does not train: every row equals the zero-shot row on the experiences it has seen
    zs = by_name["zeroshot"]
    assert zs["matrix"][0][0] == pytest.approx(zs["zero_shot_row"][0])
    # training on the stream beats the untrained model on the experience just learned
    naive = np.asarray(by_name["naive"]["matrix"])
    assert np.mean(np.diag(naive)) > np.mean(np.diag(np.asarray(zs["matrix"]))) + 0.2
    # a second invocation skips finished runs and returns the same table
    suite = _smoke(tmp_path)
    again = run_suite(suite).records
    assert [r["metrics"] for r in sorted(again, key=lambda r: r["name"])] == [
        r["metrics"] for r in sorted(records, key=lambda r: r["name"])
    ]


class _Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("method", ["naive", "lwf", "ewc", "replay"])
def test_interrupted_run_resumes_with_identical_numbers(tmp_path, monkeypatch, method):
    suite = _smoke(tmp_path, ["stream.n_experiences=2", "stream.n_classes=4", "eval.zero_shot_row=false"])
    run = next(r for r in suite.runs if r.name == method)
    reference = RunSession(suite, run, 0).execute()
    suite.output_dir = str(tmp_path / "resumed")
    calls = {"n": 0}
    original = RunSession._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise _Interrupt("simulated interruption after experience 0")

    monkeypatch.setattr(RunSession, "_save_checkpoint", save_then_crash)
    with pytest.raises(_Interrupt):
        RunSession(suite, run, 0).execute()
    out = tmp_path / "resumed" / "smoke" / f"{method}-seed0"
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    resumed = RunSession(suite, run, 0).execute()
    np.testing.assert_allclose(resumed["matrix"], reference["matrix"], atol=1e-6)
    assert json.loads((out / "metrics.json").read_text())["metrics"] == resumed["metrics"]


def test_naive_lowers_training_loss_on_the_synthetic_stream(tmp_path):
    suite = _smoke(tmp_path, ["stream.n_experiences=2", "stream.n_classes=4", "train.epochs=4"])
    run = next(r for r in suite.runs if r.name == "naive")
    session = RunSession(suite, run, 0)
    session.out = tmp_path / "naive"
    session.build()
    losses = []
    session.strategy.plugins.append(_LossRecorder(losses))
    session.strategy.train(session.benchmark.scenario.train_stream[0], eval_streams=[])
    per_epoch = np.asarray(losses).reshape(4, -1).mean(axis=1)
    assert per_epoch[-1] < 0.6 * per_epoch[0], per_epoch
    session.wandb.finish()


class _LossRecorder:
    """Minimal plugin recording the training loss of every iteration."""

    def __init__(self, losses: list[float]) -> None:
        self.losses = losses

    def __getattr__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.losses.append(float(strategy.loss))


def test_same_seed_same_numbers(tmp_path):
    suite = _smoke(tmp_path, ["stream.n_experiences=2", "stream.n_classes=4", "eval.zero_shot_row=false"])
    run = next(r for r in suite.runs if r.name == "naive")
    first = RunSession(suite, run, 0).execute()["matrix"]
    suite.output_dir = str(tmp_path / "second")
    torch.manual_seed(123)  # unrelated global RNG state before the run must not matter
    second = RunSession(suite, run, 0).execute()["matrix"]
    assert first == second
