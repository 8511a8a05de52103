"""[faults]: bad input is one line and exit 2 with nothing written; damaged files, full disks,
unsafe checkpoints and signals are survived."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_results import TINY, _folder, write_suite

from runs import checkpoint
from runs.__main__ import _install_signals, _on_sigterm, main
from runs.io import OutputError, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
VALID = TINY.format(out="{out}", extra="")


def _suite_text(**replace: str) -> str:
    text = VALID
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _bomb(kind: str) -> str:
    """Nine levels of nine aliases each (9**9 values once expanded) in flow style, as a list or a dict."""
    items = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    if kind == "list":
        return "[" + ", ".join(items) + "]"
    return "{" + ", ".join(f"k{i}: {item}" for i, item in enumerate(items)) + "}"


# (case id, suite text or bytes, extra argv, expected fragment of the one error line)
SUITES: list[tuple[str, str | bytes, list[str], str]] = [
    ("syntax", "name: x\nruns: [", [], "not valid YAML"),
    ("not-a-mapping", "- 1\n- 2\n", [], "a suite must be a mapping"),
    ("unknown-top-key", VALID + "seedz: [1]\n", [], "unknown key 'seedz'"),
    ("name-type", _suite_text(**{"name: tiny": "name: [1]"}), [], "name = [1]"),
    ("runs-empty", VALID.split("runs:")[0] + "runs: []\n", [], "'runs' must be a non-empty list"),
    ("run-not-mapping", VALID.split("runs:")[0] + "runs: [3]\n", [], "runs[0] must be a mapping"),
    ("train-type", _suite_text(**{"epochs: 1": "epochs: one"}), [], "runs[0].train.epochs = 'one'"),
    ("model-type", _suite_text(**{"bottleneck: 8": "bottleneck: 1.5"}), [], "model.units.bottleneck"),
    ("epochs-zero", _suite_text(**{"epochs: 1": "epochs: 0"}), [], "train.epochs = 0: must be in [1, inf]"),
    ("batch-zero", _suite_text(**{"batch_size: 8": "batch_size: 0"}), [], "train.batch_size = 0"),
    ("n-exp-zero", _suite_text(**{"n_experiences: 2": "n_experiences: 0"}), [], "stream.n_experiences = 0"),
    ("lr-negative", _suite_text(**{"lr: 0.01": "lr: -1"}), [], "train.lr = -1.0: must be in (0, inf]"),
    ("lr-nan", _suite_text(**{"lr: 0.01": "lr: .nan"}), [], "train.lr = nan: must be a finite number"),
    ("lr-inf", _suite_text(**{"lr: 0.01": "lr: .inf"}), [], "must be a finite number"),
    ("smoothing-one", _suite_text(**{"lr: 0.01": "lr: 0.01, label_smoothing: 1.0"}), [], "label_smoothing = 1.0"),
    ("unknown-method", _suite_text(**{"method: naive": "method: naieve"}), [], "method.name = 'naieve': unknown"),
    ("unknown-stream", _suite_text(**{"name: synthetic": "name: synthetik"}), [], "stream.name = 'synthetik'"),
    ("unknown-unit", _suite_text(**{"kind: adapter": "kind: adaptr"}), [], "units.kind"),
    ("unknown-optimizer", _suite_text(**{"lr: 0.01": "lr: 0.01, optimizer: adam"}), [], "train.optimizer = 'adam'"),
    ("duplicate-runs", VALID + "  - method: naive\n", [], "run names must be unique; repeated: naive"),
    ("duplicate-key", VALID.replace("  seeds: [0]", "  seeds: [0]\n  seeds: [1]"), [], "duplicate key 'seeds'"),
    ("duplicate-seeds", VALID.replace("seeds: [0]", "seeds: [0, 0]"), [], "seeds must be unique"),
    ("name-dotdot", VALID + "  - {method: naive, name: ../../escaped}\n", [], "a name is 1-64 letters"),
    ("name-slash", VALID + "  - {method: naive, name: a/b}\n", [], "a name is 1-64 letters"),
    ("name-dot", VALID + "  - {method: naive, name: a.b}\n", [], "a name is 1-64 letters"),
    ("name-long", VALID + "  - {method: naive, name: " + "x" * 300 + "}\n", [], "a name is 1-64 letters"),
    ("name-reserved", VALID + "  - {method: naive, name: train}\n", [], "reserved"),
    ("suite-name-path", _suite_text(**{"name: tiny": "name: ../up"}), [], "name = '../up'"),
    ("output-dir-empty", _suite_text(**{"output_dir: {out}": "output_dir: ''"}), [], "output_dir is empty"),
    ("bad-arch", _suite_text(**{"arch: clip-tiny": "arch: ViT-B-166"}), [], "not an open_clip model; close matches"),
    ("classes-indivisible", _suite_text(**{"n_classes: 4": "n_classes: 7"}), [], "not divisible"),
    ("bad-device", _suite_text(**{"device: cpu": "device: tpu"}), [], "train.device = 'tpu'"),
    ("dict-field", _suite_text(**{"lr: 0.01": "lr: 0.01, lr_by_experience: {exp0: -1}"}), [],
     "lr_by_experience.exp0 = -1.0"),
    ("alias-bomb-list", _suite_text(**{"seeds: [0]": "seeds: " + _bomb("list")}), [], "alias bomb"),
    ("alias-bomb-dict", _suite_text(**{"lr: 0.01": "lr: 0.01, lr_by_experience: " + _bomb("dict")}), [],
     "alias bomb"),
    ("python-tag", VALID + "  - {method: !!python/object/apply:os.system ['touch pwned']}\n", [],
     "could not determine a constructor"),
    ("non-utf8", VALID.encode() + b"# \xff\xfe\n", [], "not UTF-8 text"),
    ("binary", b"\x00\x01\x02garbage", [], "binary file"),
    ("deep-nesting", "name: x\nruns: " + "[" * 2000 + "]" * 2000 + "\n", [], "nesting deeper than"),
    ("set-malformed", VALID, ["--set", "train.lr=[1"], "--set 'train.lr=[1': not valid YAML"),
    ("set-no-equals", VALID, ["--set", "train.lr"], "expected KEY=VALUE"),
    ("set-bad-arch", VALID, ["--set", "model.arch=ViT-B-166"], "not an open_clip model"),
    ("set-indivisible", VALID, ["--set", "stream.n_classes=7"], "not divisible"),
    ("set-device", VALID, ["--set", "train.device=tpu"], "train.device = 'tpu'"),
    ("set-nobody-has-it", VALID, ["--set", "method.alpha=2"], "no selected run has option 'method.alpha'"),
    ("set-unknown-run", VALID, ["--set", "nope:train.lr=1"], "no such run"),
    ("only-unknown", VALID, ["--only", "naiv"], "--only 'naiv': no such run"),
    ("name-newline", VALID + '  - {method: naive, name: "naive2\\n"}\n', [], "runs[2].name"),
    ("device-newline", _suite_text(**{"device: cpu": 'device: "cpu\\n"'}), [], "control characters"),
    ("seed-2-32", VALID.replace("seeds: [0]", "seeds: [4294967296]"), [], "must be <= 4294967295"),
    ("batch-1e18", _suite_text(**{"batch_size: 8": "batch_size: 1000000000000000000"}), [], "train.batch_size"),
    ("n-exp-1e18", _suite_text(**{"n_experiences: 2": "n_experiences: 1000000000000000000"}), [],
     "stream.n_experiences"),
    ("lr-table-unknown", _suite_text(**{"lr: 0.01": "lr: 0.01, lr_by_experience: {Aircraft: 0.1}"}), [],
     "unknown experiences ['Aircraft']"),
    ("output-dir-tab", _suite_text(**{"output_dir: {out}": 'output_dir: "{out}\\tx"'}), [], "control characters"),
]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_sweep_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, command):
    from runs.config import _known_archs

    _known_archs()  # open_clip's model list: imported once per process, not per input
    slow = []
    for case, text, extra, fragment in SUITES:
        folder = tmp_path / case
        folder.mkdir()
        path = folder / "suite.yaml"
        out = folder / "out"
        if isinstance(text, bytes):
            path.write_bytes(text.replace(b"{out}", str(out).encode()))
        else:
            path.write_text(text.replace("{out}", str(out)))
        tic = time.process_time()  # CPU time: robust to other load on a shared machine
        code = main([command, str(path), *extra])
        seconds = time.process_time() - tic
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (case, err)
        assert len(err) == 1 and len(err[0]) < 600, (case, err)
        assert fragment in err[0], (case, err[0])
        assert str(path) in err[0] or err[0].startswith("error: --set"), (case, err[0])
        assert sorted(p.name for p in folder.iterdir()) == ["suite.yaml"], case  # no outputs, no wandb/
        if seconds > 1.0:
            slow.append((case, round(seconds, 2)))
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    assert not slow, slow


def test_a_folder_or_missing_file_as_suite_is_one_line(tmp_path, capsys):
    for arg in (str(tmp_path), str(tmp_path / "missing.yaml")):
        assert main(["run", arg]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_sigterm_stops_with_one_line_closes_wandb_as_failed_and_the_run_resumes(tmp_path):
    """A real process, a real SIGTERM after the first experience: one line, exit 130, checkpoint kept."""
    path = write_suite(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # 40 epochs per experience: the 3 experiences left after the first checkpoint take seconds, far
    # longer than the poll (with 1 epoch the run could finish between two polls)
    overrides = ["--set", "stream.n_experiences=4", "--set", "train.epochs=40"]
    proc = subprocess.Popen([sys.executable, "-m", "runs", "run", str(path), "--only", "naive", *overrides],
                            env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    ckpt = _folder(tmp_path) / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert ckpt.exists() and not (_folder(tmp_path) / "failed.json").exists()
    sessions = json.loads((_folder(tmp_path) / "provenance.json").read_text())["sessions"]
    assert sessions[-1]["status"] == "interrupted"
    from test_wandb_logger import _finished_records

    offline = next((_folder(tmp_path) / "wandb").glob("offline-run-*"))
    exits = [r.exit for r in _finished_records(offline) if r.WhichOneof("record_type") == "exit"]
    assert exits and exits[-1].exit_code == 1  # the W&B run is closed as failed
    assert main(["run", str(path), "--only", "naive", *overrides]) == 0
    assert (_folder(tmp_path) / "metrics.json").exists() and not ckpt.exists()


def test_sigterm_handler_is_left_to_submitit_inside_a_submitit_job(monkeypatch):
    previous = signal.getsignal(signal.SIGTERM)
    try:
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _install_signals()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        monkeypatch.delenv("SUBMITIT_EXECUTOR")
        _install_signals()
        assert signal.getsignal(signal.SIGTERM) is _on_sigterm
        with pytest.raises(KeyboardInterrupt):
            _on_sigterm(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("damage", [b"", b"{not json", b"\xff\xfe\x00"])
def test_damaged_metrics_json_is_quarantined_and_the_run_redone(tmp_path, damage, caplog):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    metrics = _folder(tmp_path) / "metrics.json"
    good = json.loads(metrics.read_text())
    metrics.write_bytes(damage)
    assert main(["run", str(path)]) == 0
    assert list(_folder(tmp_path).glob("metrics.json.corrupt-*"))
    again = json.loads(metrics.read_text())
    assert again["matrix"] == good["matrix"]  # same seed, same numbers
    assert json.loads((_folder(tmp_path, "zeroshot-seed0") / "metrics.json").read_text())["status"] == "finished"


class _Stop(KeyboardInterrupt):
    pass


def test_damaged_checkpoint_is_quarantined_and_the_run_restarts(tmp_path, monkeypatch):
    from runs.config import load_suite
    from runs.runner import RunSession, run_suite

    path = write_suite(tmp_path)
    original = RunSession._save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise _Stop()

    monkeypatch.setattr(RunSession, "_save_checkpoint", save_then_stop)
    with pytest.raises(_Stop):
        run_suite(load_suite(path, only=["naive"]), only=["naive"])
    monkeypatch.undo()
    (_folder(tmp_path) / "checkpoint.pt").write_bytes(b"garbage" * 10)
    outcome = run_suite(load_suite(path))
    assert outcome.exit_code == 0 and list(_folder(tmp_path).glob("checkpoint.pt.corrupt-*"))
    assert {r["run_id"] for r in outcome.records} == {"naive-seed0", "zeroshot-seed0"}


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "executed"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "plugins": {}, "rng": evil, "rows": [], "next_step": 1}, path)
    with pytest.raises(checkpoint.CheckpointError, match="unreadable or unsafe checkpoint"):
        checkpoint.load(path)
    assert not marker.exists()


def test_full_disk_leaves_no_temporary_file_and_one_line(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError) as info:
        atomic_write_text(target, "new")
    assert str(info.value) == f"{target}: cannot write: no space left on device"
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("blocker", ["file", "readonly"])
def test_unusable_output_folder_is_one_message(tmp_path, capsys, blocker):
    path = write_suite(tmp_path)
    out = tmp_path / "out"
    if blocker == "file":
        out.write_text("I am a file")
    else:
        out.mkdir()
        out.chmod(0o500)
    try:
        if os.geteuid() == 0 and blocker == "readonly":
            pytest.skip("root ignores folder permissions")
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write" in err[0] and str(out) in err[0], err
    finally:
        if out.is_dir():
            out.chmod(0o700)


class _Counter:
    """A user's own stateful plugin with the state protocol."""

    def __init__(self):
        self.seen = 0

    def state_dict(self):
        return {"seen": self.seen, "tensor": torch.arange(3) * self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class _Stateful:
    """A plugin with state but no protocol: refused."""

    def __init__(self):
        self.memory = []


def test_user_plugins_go_through_the_protocol_or_are_refused(tmp_path):
    plugin = _Counter()
    plugin.seen = 7
    ctx = checkpoint.Context(strategy=None, train_stream=[])
    path = tmp_path / "c.pt"
    checkpoint.save(path, {"model": {}, "plugins": checkpoint.plugin_states([plugin], ctx),
                           "rng": checkpoint.rng_state(), "rows": [], "next_step": 1})
    fresh = _Counter()
    state = checkpoint.load(path)
    checkpoint.load_plugin_states([fresh], state["plugins"], ctx)
    assert fresh.seen == 7
    with pytest.raises(checkpoint.CheckpointError, match="plugin _Stateful has no state_dict"):
        checkpoint.check_checkpointable([_Counter(), _Stateful()])


def test_rng_state_round_trips_and_cuda_state_is_saved_when_cuda_is_used(monkeypatch):
    import random

    import numpy as np

    state = checkpoint.rng_state()
    expected = (torch.rand(2), np.random.rand(2), random.random())
    checkpoint.set_rng_state(state)
    again = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]
    fake = [torch.tensor([1, 2], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append(s))
    state = checkpoint.rng_state()
    assert state["cuda"] is fake
    checkpoint.set_rng_state(state)
    assert restored == [fake]


MOZO_CONDU = """
  - {method: {name: mozo, branch: language, layers: all}, name: mozo, train: {lr: 0.01, warmup: 1, batch_size: 8,
     epochs: 1}, model: {units: {kind: moe, bottleneck: 8, dropout: 0.1}}}
  - {method: {name: condu}, name: condu, train: {iterations: 2, warmup: 1, batch_size: 8, lr: 0.001},
     model: {units: {kind: lora, lora_rank: 4}}, eval: {zero_shot_row: false}}
"""


@pytest.mark.parametrize("name", ["mozo", "condu"])
def test_mozo_and_condu_resume_to_identical_numbers(tmp_path, monkeypatch, name):
    from runs.config import load_suite
    from runs.runner import RunSession, run_suite

    path = write_suite(tmp_path, MOZO_CONDU)
    reference = run_suite(load_suite(path, only=[name], output_dir=str(tmp_path / "ref")), only=[name])
    original = RunSession._save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise _Stop()

    monkeypatch.setattr(RunSession, "_save_checkpoint", save_then_stop)
    suite = load_suite(path, only=[name])
    with pytest.raises(_Stop):
        run_suite(suite, only=[name])
    monkeypatch.undo()
    resumed = run_suite(suite, only=[name])
    (ref,), (res,) = reference.records, resumed.records
    np.testing.assert_allclose(res["matrix"], ref["matrix"], atol=1e-6)
    assert res["metrics"] == pytest.approx(ref["metrics"], abs=1e-6)
