"""[faults] item 1: a run killed with SIGKILL (its whole process group) right after any of its
checkpoints resumes to the numbers of an uninterrupted run, bit for bit, for every registered method.

Each case runs a 4-experience, 2-epoch run on a tiny synthetic stream with the units' dropout on
(dropout draws are what a resume that rebuilds state differently shifts) three ways: uninterrupted;
killed after its 1st checkpoint, resumed and killed after its 2nd, resumed and killed after its 3rd,
then resumed to the end. ``metrics.json`` must agree exactly. The methods come from the registry,
so a new method is covered automatically; LwF runs by default (CI's time budget), the whole matrix
under ``-m slow``. A-GEM's restarted memory sampler is the documented exception (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import strategies  # noqa: F401  (fills the registry)
from runs.config import ConfigError, load_suite
from runs.machine import check_machine
from strategies.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = {"lwf"}  # the default run: LwF (its teacher is extra checkpointed state); the rest under -m slow
INEXACT = {"agem": "A-GEM's memory sampler restarts at a resume (docs/reliability.md#damaged-files)"}
UNITS = ["{kind: moe, bottleneck: 8, dropout: 0.1}", "{kind: lora, lora_rank: 4, dropout: 0.1}",
         "{kind: lora, lora_rank: 4}", "{kind: adapter, bottleneck: 8, dropout: 0.1}", "{kind: none}"]

SUITE = """name: rs
output_dir: {out}
wandb: {{mode: disabled}}
defaults:
  model: {{arch: clip-tiny, pretrained: none, units: {units}}}
  stream: {{name: synthetic, n_classes: 8, n_experiences: 4, train_per_class: 8, test_per_class: 8}}
  train: {{epochs: 2, batch_size: 8, lr: 0.003, warmup: 1, device: cpu, augment: false{iterations}}}
  data_root: {data}
  download: false
  seeds: [0]
runs:
  - method: {method}
"""
# ZSCL's presets read reference images and captions from outside the stream by default (absent here):
# the tiny run distils on the stream's own images and class prompts, the same code path
OWN_DATA = "{{name: {name}, ref_images: current, ref_texts: current}}"

# a child that SIGKILLs its own process group right after its first checkpoint is on disk
KILLER = """
import os, signal, sys
from runs.session import RunSession
original = RunSession._save_checkpoint
def save_then_die(self, *args, **kwargs):
    original(self, *args, **kwargs)
    os.killpg(os.getpgid(0), signal.SIGKILL)
RunSession._save_checkpoint = save_then_die
from runs.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _params() -> list:
    params = []
    for name in sorted(METHODS):
        marks = [] if name in DEFAULT else [pytest.mark.slow]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _suite(tmp_path: Path, method: str) -> Path:
    """The suite file for ``method``: the first unit kind its checks accept; skip when it needs
    data or weights this machine lacks."""
    spec = METHODS[method]
    iterations = ", iterations: 4" if "iterations" in spec.recipe else ""  # 2 epochs of 2 batches
    external = getattr(spec.config(), "reads_reference_data", False)  # ZSCLConfig.reads_reference_data
    entry = OWN_DATA.format(name=method) if external else method
    path = tmp_path / "suite.yaml"
    errors = []
    for units in UNITS:
        path.write_text(SUITE.format(out=tmp_path / "out", units=units, iterations=iterations, method=entry,
                                     data=ROOT.parent / "shared" / "data"))
        try:
            suite = load_suite(path)
        except ConfigError as error:
            errors.append(str(error))
            continue
        problems = check_machine(suite.runs[0])
        if problems:
            pytest.skip(f"{method}: {problems[0]}")
        return path
    pytest.fail(f"{method}: no tiny config passes validation: {errors}")


def _run(args: list[str], *, killer: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", KILLER] if killer else [sys.executable, "-m", "runs"]
    return subprocess.run([*command, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          start_new_session=True)


def _record(folder: Path) -> dict:
    """``metrics.json``'s numbers and, more sensitive than accuracies of a tiny model, the sequence of
    every loss Avalanche logged (each training epoch, each evaluated experience) in ``log.txt``."""
    record = json.loads((folder / "metrics.json").read_text())
    losses = re.findall(r"^\s*(Loss_\S+ = \S+)$", (folder / "log.txt").read_text(), flags=re.M)
    return {"losses": losses} | {k: record[k] for k in ("matrix", "zero_shot_row", "metrics", "accuracy_per_step")}


@pytest.mark.parametrize("method", _params())
def test_sigkill_after_every_checkpoint_resumes_bit_identically(tmp_path, method):
    path = _suite(tmp_path, method)
    folder = tmp_path / "out" / "rs" / f"{method}-seed0"
    reference = _run(["run", str(path), "--output-dir", str(tmp_path / "ref")], killer=False)
    assert reference.returncode == 0, reference.stderr[-2000:]
    for step in (1, 2, 3):
        killed = _run(["run", str(path)], killer=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        saved = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert saved["next_step"] == step
    resumed = _run(["run", str(path)], killer=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at experience 3" in (folder / "log.txt").read_text()
    expected, got = _record(tmp_path / "ref" / "rs" / f"{method}-seed0"), _record(folder)
    if method in INEXACT and got != expected:
        pytest.xfail(INEXACT[method])
    assert got["losses"] and got == expected
