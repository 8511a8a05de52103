"""Executors give the serial numbers: local workers, Ray, submitit; killed / preempted jobs resume.

"Identical" = the same accuracy matrix, zero-shot row and metrics as the in-process serial run with
the same torch thread count (1), on a 2-run, 2-experience subset of the smoke suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from runs.__main__ import main
from runs.config import ConfigError, load_suite
from runs.executors import ExecutorOptions, check_options
from runs.executors.local import workers_and_gpus
from runs.lock import lock_path, read_lock
from runs.runkey import RunKey
from runs.runner import plan
from runs.status import run_status

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "runs/suites/smoke.yaml")
SETS = ["stream.n_experiences=2", "stream.n_classes=4"]
ONLY = ["naive", "lwf"]
SUBSET = [x for s in SETS for x in ("--set", s)] + [x for o in ONLY for x in ("--only", o)]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                    "RAY_USAGE_STATS_ENABLED": "0"}


def _results(out: Path) -> dict[str, tuple]:
    results = {}
    for run in ONLY:
        record = json.loads((out / "smoke" / f"{run}-seed0" / "metrics.json").read_text())
        results[run] = (record["matrix"], record["zero_shot_row"], record["metrics"],
                        record["provenance"]["torch_threads"])
    return results


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[str, tuple]:
    out = tmp_path_factory.mktemp("serial")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", SMOKE, *SUBSET, "--output-dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return _results(out)


def _follow(cmd: list[str], out: Path, kill: int | None = None, env: dict | None = None) -> tuple[str, set, int | None]:
    """Run ``python -m runs ...``; poll the status of lwf; once naive has a checkpoint, send ``kill`` to
    the process holding naive's lock. Returns (output, lwf states seen, the pid signalled)."""
    suite = load_suite(SMOKE, SETS, only=ONLY, output_dir=str(out))
    fps = {f"{r.name}-seed0": RunKey.of(suite, r, 0).fingerprint for r in suite.runs if r.name in ONLY}
    proc = subprocess.Popen([sys.executable, "-m", "runs", *cmd, "--output-dir", str(out)], cwd=ROOT,
                            env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, signalled = set(), None
    deadline = time.time() + 900
    while proc.poll() is None and time.time() < deadline:
        seen.add(run_status(suite.dir, "lwf-seed0", fps["lwf-seed0"]).state)
        if kill is not None and signalled is None and (suite.dir / "naive-seed0" / "checkpoint.pt").exists():
            info = read_lock(lock_path(suite.dir, "naive-seed0"))
            if info is not None and info.pid > 0:
                os.kill(info.pid, kill)
                signalled = info.pid
        time.sleep(0.05)
    output = proc.communicate(timeout=60)[0]
    seen.add(run_status(suite.dir, "lwf-seed0", fps["lwf-seed0"]).state)
    assert proc.returncode == 0, output[-3000:]
    return output, seen, signalled


def _assert_identical(serial: dict, out: Path) -> None:
    got = _results(out)
    for run in ONLY:
        assert got[run] == serial[run], run
        assert got[run][3] == 1  # torch threads, recorded in provenance


def test_local_two_workers_identical_killed_worker_resumes_and_status_follows(serial, tmp_path):
    output, seen, killed = _follow(["run", SMOKE, *SUBSET, "--executor", "local", "--workers", "2"], tmp_path,
                                   kill=signal.SIGKILL)
    assert killed is not None
    assert "worker died (exit code -9); starting it again (1 of 1)" in output
    assert "took over a stale lock" in output and f"pid {killed}" in output
    assert "resuming at experience 1" in (tmp_path / "smoke" / "naive-seed0" / "log.txt").read_text()
    assert {"running", "finished"} <= seen
    assert "naive-seed0: started" in output and "lwf-seed0: finished" in output
    _assert_identical(serial, tmp_path)


def test_two_concurrent_invocations_never_run_the_same_run(tmp_path):
    cmd = [sys.executable, "-m", "runs", "run", SMOKE, *SUBSET, "--output-dir", str(tmp_path)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        # exit 1 only for a run the other invocation was running (docs/validation.md#exit-codes), named
        assert proc.returncode == 0 or (proc.returncode == 1 and "another worker holds its lock" in output), output
    for run in ONLY:
        sessions = json.loads((tmp_path / "smoke" / f"{run}-seed0" / "provenance.json").read_text())["sessions"]
        assert len(sessions) == 1, (run, outputs)  # executed once, by one of the two
        assert (tmp_path / "smoke" / f"{run}-seed0" / "metrics.json").exists()


@pytest.mark.slow  # a Ray cluster per test: ~35 s of CI's budget; the driver's kill-and-resume path is the local test's
@pytest.mark.skipif(not __import__("importlib").util.find_spec("ray"), reason="the ray extra is not installed")
def test_ray_identical_and_a_killed_task_is_retried_and_resumes(serial, tmp_path):
    output, seen, killed = _follow(["run", SMOKE, *SUBSET, "--executor", "ray", "--retries", "1"], tmp_path,
                                   kill=signal.SIGKILL)
    assert killed is not None
    assert "resuming at experience 1" in (tmp_path / "smoke" / "naive-seed0" / "log.txt").read_text()
    assert "naive-seed0: finished" in output and "lwf-seed0: finished" in output
    _assert_identical(serial, tmp_path)


@pytest.mark.slow  # submitit's local cluster: ~40 s of CI's budget; the sbatch script is checked by a fake sbatch below
@pytest.mark.skipif(not __import__("importlib").util.find_spec("submitit"), reason="the slurm extra is not installed")
def test_submitit_local_identical_and_a_preempted_task_requeues_and_resumes(serial, tmp_path):
    env = ENV | {"RUNS_SLURM_CLUSTER": "local"}
    output, seen, signalled = _follow(["run", SMOKE, *SUBSET, "--executor", "slurm", "--cpus-per-run", "1"], tmp_path,
                                      kill=signal.SIGUSR2, env=env)
    assert signalled is not None
    folder = tmp_path / "smoke" / "naive-seed0"
    assert "resuming at experience 1" in (folder / "log.txt").read_text()
    assert any(p.name.startswith("slurm-") and p.name.endswith(".out") for p in folder.iterdir())  # scheduler log
    _assert_identical(serial, tmp_path)


def test_sbatch_script_from_the_launcher_block_through_a_fake_sbatch(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/script.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(Path(SMOKE).read_text() + "launcher: {partition: gpu, time: '08:00:00', gpus_per_run: 1, "
                                                    "mem: 16G, account: lab, sbatch: {qos: high}}\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("RUNS_SLURM_CLUSTER", raising=False)
    code = main(["run", str(suite_file), *SUBSET, "--output-dir", str(tmp_path / "out"), "--executor", "slurm",
                 "--no-wait", "--cpus-per-run", "2"])
    assert code == 0, capsys.readouterr()
    script = (tmp_path / "script.sh").read_text().splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=480", "#SBATCH --gres=gpu:1", "#SBATCH --array=0-1%2",
                 "#SBATCH --requeue", "#SBATCH --mem=16G", "#SBATCH --account=lab", "#SBATCH --qos=high",
                 "#SBATCH --cpus-per-task=2", "#SBATCH --signal=USR2@90"):
        assert line in script, line
    out_dir = tmp_path / "out" / "smoke"
    assert any("--output=" + str(out_dir / ".slurm") in line for line in script)
    assert json.loads((out_dir / ".slurm" / "array.json").read_text()) == {"4242_0": "naive-seed0",
                                                                          "4242_1": "lwf-seed0"}
    # the command line's --time wins over the block's
    main(["run", str(suite_file), *SUBSET, "--output-dir", str(tmp_path / "out2"), "--executor", "slurm",
          "--no-wait", "--time", "1-00:30:00"])
    assert "#SBATCH --time=1470" in (tmp_path / "script.sh").read_text().splitlines()


@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "--executor 'dask': unknown; choose one of serial, local, ray, slurm"),
    (["--executor", "local", "--workers", "0"], "--workers 0: must be >= 1"),
    (["--executor", "local", "--no-wait"], "--no-wait needs a scheduler that outlives this process"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster reachable there"),
    (["--executor", "slurm", "--time", "8h"], "time='8h': expected [D-]HH:MM:SS"),
])
def test_bad_executor_options_exit_2_with_one_message_and_nothing_written(args, message, tmp_path, capsys,
                                                                          monkeypatch):
    if "ray" in args or "slurm" in args:
        pytest.importorskip("ray" if "ray" in args else "submitit")
    monkeypatch.setenv("RUNS_SLURM_CLUSTER", "local")
    assert main(["run", SMOKE, *SUBSET, "--output-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()


def test_missing_package_names_the_extra(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("ray", "submitit")
                        else real(name, *a))
    for executor, extra in (("ray", "ray"), ("slurm", "slurm")):
        assert main(["run", SMOKE, "--output-dir", str(tmp_path), "--executor", executor]) == 2
        assert f'pip install -e ".[{extra}]"' in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_unknown_launcher_key_exits_2(tmp_path, capsys):
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(Path(SMOKE).read_text() + "launcher: {partition: gpu, gpus: 2}\n")
    assert main(["run", str(suite_file), "--output-dir", str(tmp_path / "out"), "--executor", "slurm"]) == 2
    assert "unknown key 'launcher.gpus'; allowed keys: partition, time" in capsys.readouterr().err


def test_more_workers_than_gpus_names_both_counts_unless_shared(monkeypatch, tmp_path):
    suite = load_suite(SMOKE, SETS, only=ONLY, output_dir=str(tmp_path))  # never the repository's outputs/
    planned = plan(suite, ONLY, compare_machine=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--workers 3 but this machine shows 2 GPU\(s\)"):
        workers_and_gpus(ExecutorOptions("local", workers=3), planned)
    assert workers_and_gpus(ExecutorOptions("local", workers=3, share_gpus=True), planned) == (3, 2)
    assert workers_and_gpus(ExecutorOptions("local"), planned) == (2, 2)  # default: one per GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert workers_and_gpus(ExecutorOptions("local", workers=2), planned) == (2, 0)  # CPU: cores split


def test_options_belong_to_their_executor():
    with pytest.raises(ConfigError, match="--workers applies to --executor local only"):
        check_options(ExecutorOptions("serial", workers=2))
    with pytest.raises(ConfigError, match="--address applies to --executor ray only"):
        check_options(ExecutorOptions("local", address="auto"))


def test_extras_are_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    for extra in ("ray", "slurm"):
        for text in project["optional-dependencies"][extra]:
            req = Requirement(text)
            assert req.specifier.contains(pins[req.name]), (req, pins.get(req.name))
    assert '-e ".[dev,ray,slurm]"' in (ROOT / ".ci/run").read_text()
