"""[faults] issue 21, the rest: damaged side files in the report, two drivers on one output folder,
environments that refuse (W&B host unreachable, read-only output folder, full disk during a checkpoint),
damaged data named. Tiny in-process suites (2 experiences, 4 classes) unless a second process is the point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_results import _folder, write_suite

from runs.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


# ---- item 3: a damaged side file leaves the other runs and the table alone -------------------------
def test_a_damaged_config_yaml_of_a_finished_run_is_named_and_the_table_is_rebuilt(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    (_folder(tmp_path) / "config.yaml").write_text("a: [\n")
    (tmp_path / "out" / "tiny" / "results.md").unlink()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out" / "tiny")]) == 0
    captured = capsys.readouterr()
    assert "| naive |" in captured.out and "Traceback" not in captured.err
    assert "naive-seed0/config.yaml: unreadable run config" in captured.err
    assert "| naive |" in (tmp_path / "out" / "tiny" / "results.md").read_text()
    assert main(["run", str(path)]) == 0  # the suite table of `run` too


def test_a_failed_json_holding_an_empty_object_is_named_and_left_out_of_the_table(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    folder = _folder(tmp_path)
    (folder / "metrics.json").unlink()
    (folder / "failed.json").write_text(json.dumps({}))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "out" / "tiny")]) == 1  # something is damaged: named, exit 1
    captured = capsys.readouterr()
    assert "| zeroshot |" in captured.out and "| naive |" not in captured.out
    assert "naive-seed0/failed.json: run record lacks run_id, name" in captured.err
    assert "Traceback" not in captured.err
    assert main(["status", str(path)]) == 0
    assert main(["run", str(path)]) == 1  # failed earlier (its failed.json says so), the table still written
    assert "Traceback" not in capsys.readouterr().err


# ---- item 5: two drivers on one output folder ----------------------------------------------------------
def test_two_local_drivers_started_together_on_one_suite_both_succeed(tmp_path, capsys):
    """Each driver writes its own probe (``.probes/<token>``, commit eb60932): neither fails the other's
    runs; the run neither selected is pending (not started), never failed."""
    path = write_suite(tmp_path, extra="  - {method: naive, name: other}\n")
    procs = {only: subprocess.Popen([sys.executable, "-m", "runs", "run", str(path), "--only", only,
                                     "--executor", "local", "--workers", "1"], cwd=ROOT, env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for only in ("zeroshot", "naive")}
    outputs = {only: proc.communicate(timeout=600)[0] for only, proc in procs.items()}
    for only, proc in procs.items():
        assert proc.returncode == 0, outputs[only][-3000:]
        assert "does not see the output folder" not in outputs[only]
    suite_dir = tmp_path / "out" / "tiny"
    assert not list(suite_dir.glob("*/failed.json"))
    assert all((suite_dir / f"{run}-seed0" / "metrics.json").is_file() for run in ("zeroshot", "naive"))
    assert list((suite_dir / ".probes").iterdir()) == []  # each driver removed its own probe
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "other-seed0" in out and "pending   not started" in out and "failed" not in out


# ---- item 7: environments that refuse ----------------------------------------------------------------
def test_run_online_with_a_key_but_an_unreachable_wandb_host_fails_once_before_any_work(tmp_path, capsys,
                                                                                        monkeypatch):
    import time

    import wandb

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:1")  # nothing listens: refused at once
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init reached without a network"))
    path = write_suite(tmp_path)
    tic = time.time()
    assert main(["run", str(path), "--online"]) == 2
    assert time.time() - tic < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "127.0.0.1:1" in err[0] and "--online" in err[0], err
    assert not (tmp_path / "out").exists()


def _read_only(monkeypatch, root):
    """Writes under ``root`` fail as on a read-only mount (EROFS); reads and existing folders work (as
    ``chmod`` would do, which root ignores)."""
    import builtins
    import errno

    real_open, real_mkdir, real_bopen = os.open, os.mkdir, builtins.open
    real_replace, real_rename = os.replace, os.rename
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def refuse(path):
        if str(path).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def fake_open(path, flags, *args, **kwargs):
        if flags & writing:
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if not os.path.exists(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_bopen(file, mode="r", *args, **kwargs):
        if isinstance(file, str | Path) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_bopen(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", lambda a, b, *x, **k: (refuse(a), real_replace(a, b, *x, **k))[1])
    monkeypatch.setattr(os, "rename", lambda a, b, *x, **k: (refuse(a), real_rename(a, b, *x, **k))[1])
    monkeypatch.setattr(builtins, "open", fake_bopen)


@pytest.mark.parametrize("command", ["run", "run-changed", "report", "status"])
def test_a_read_only_output_folder_is_one_line_naming_it(tmp_path, capsys, monkeypatch, command):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    (_folder(tmp_path) / "metrics.json").write_bytes(b"{torn")  # status must not move it aside
    out = tmp_path / "out"
    capsys.readouterr()
    _read_only(monkeypatch, out)
    argv = {"run": ["run", str(path)], "run-changed": ["run", str(path), "--set", "train.lr=0.02", "--rerun-changed"],
            "report": ["report", str(out / "tiny")], "status": ["status", str(path)]}[command]
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    if command == "status":  # never writes
        assert code == 0 and (_folder(tmp_path) / "metrics.json").read_bytes() == b"{torn"
        return
    err = [line for line in captured.err.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert code == 2 and len(err) == 1 and "read-only file system" in err[0] and str(out) in err[0], captured.err


def test_the_log_handler_tells_a_full_disk_once(tmp_path, capsys):
    import errno
    import logging

    from runs.io import LogFileHandler

    handler = LogFileHandler(tmp_path / "log.txt")

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    handler.stream.close()
    handler.stream = type("Full", (), {"write": no_space, "flush": no_space, "close": lambda self: None})()
    logger = logging.getLogger("test_faults_21_rest.full")
    logger.addHandler(handler)
    try:
        for i in range(200):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Logging error" not in err and err.count("no space left on device") == 1, err


def test_a_full_disk_at_a_checkpoint_keeps_the_run_resumable(tmp_path, capsys, monkeypatch):
    """The disk fills while the second checkpoint is written (and the log can no longer be appended):
    the run stops with one line, is not marked failed, keeps the first checkpoint, and the next run
    resumes to the numbers of an uninterrupted run."""
    import errno

    from runs import checkpoint, io, session

    reference = write_suite(tmp_path, name="reference.yaml")
    reference.write_text(reference.read_text().replace(str(tmp_path / "out"), str(tmp_path / "ref")))
    assert main(["run", str(reference), "--only", "naive"]) == 0
    path = write_suite(tmp_path)
    real_save, real_fsync, real_append, calls = checkpoint.save, os.fsync, io.open_append, []
    full = {"now": False}

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    class Stream:  # log.txt: appends fail once the disk is full
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def write(self, text):
            return no_space() if full["now"] else self.inner.write(text)

    def save(*args, **kwargs):
        calls.append(1)
        full["now"] = len(calls) >= 2
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)
    monkeypatch.setattr(os, "fsync", lambda fd: no_space() if full["now"] else real_fsync(fd))
    monkeypatch.setattr(io, "open_append", lambda p: Stream(real_append(p)))
    monkeypatch.setattr(session, "open_append", lambda p: Stream(real_append(p)))
    capsys.readouterr()
    assert main(["run", str(path), "--only", "naive"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err and "no space left on device" in err, err
    assert len([line for line in err.splitlines() if not line.startswith("INFO")]) <= 3, err
    folder = _folder(tmp_path)
    assert (folder / "checkpoint.pt").is_file() and not (folder / "failed.json").exists()
    monkeypatch.undo()
    assert main(["run", str(path), "--only", "naive"]) == 0
    assert "resuming at experience 1" in capsys.readouterr().err
    got = json.loads((folder / "metrics.json").read_text())
    want = json.loads((tmp_path / "ref" / "tiny" / "naive-seed0" / "metrics.json").read_text())
    assert got["matrix"] == want["matrix"] and got["metrics"] == want["metrics"]


# ---- item 8: the upper bound of every int is stated where the ranges are -----------------------------
def test_the_option_reference_states_the_upper_bound_of_every_int():
    from runs.config import MAX_INT
    from runs.listing import format_markdown

    assert f"at most 2^32 − 1 = {MAX_INT}" in format_markdown() and MAX_INT == 2**32 - 1


# ---- item 9: damaged data is named -------------------------------------------------------------------
def _tiny_imagenet(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """A TinyImageNet layout with a few real 8x8 JPEGs per class."""
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    lines = []
    for i, wnid in enumerate(wnids):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        for k in range(per_class):
            color = (40 * i, 20 * k, 100)
            Image.new("RGB", (8, 8), color).save(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
            Image.new("RGB", (8, 8), color).save(folder / "val" / "images" / f"val_{i}_{k}.JPEG")
            lines.append(f"val_{i}_{k}.JPEG\t{wnid}\t0\t0\t8\t8\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_jpeg_fails_the_read_naming_the_file(tmp_path):
    from benchmarks.common import CorruptImageError, ImageFileDataset
    from runs.session import _one_line

    folder = _tiny_imagenet(tmp_path, classes=1, per_class=2)
    good, bad = sorted((folder / "train" / "n00000000" / "images").iterdir())
    _truncate(bad)
    dataset = ImageFileDataset([str(good), str(bad)], [0, 0])
    assert dataset[0][0].size == (8, 8)
    with pytest.raises(CorruptImageError, match=f"{bad}: the image does not decode"):
        dataset[1]
    # through DataLoader workers the first line is torch's "Caught ... in DataLoader worker": the file still shows
    wrapped = CorruptImageError(f"Caught CorruptImageError in DataLoader worker process 0.\nTraceback ...\n"
                                f"benchmarks.common.CorruptImageError: {bad}: the image does not decode")
    assert str(bad) in _one_line(wrapped)


def _eurosat(root: Path, per_class: int = 2) -> Path:
    """MTIL's EuroSAT layout (``eurosat/2750/<ClassName>/*.jpg``) with a few real 8x8 JPEGs per class."""
    from PIL import Image

    from benchmarks.mtil import EUROSAT_FOLDERS

    folder = root / "eurosat" / "2750"
    for i, name in enumerate(EUROSAT_FOLDERS):
        (folder / name).mkdir(parents=True)
        for k in range(per_class):
            Image.new("RGB", (8, 8), (20 * i, 50 * k, 90)).save(folder / name / f"{name}_{k}.jpg")
    return folder


def _damage(folder: Path) -> Path:
    """Truncate one image of Forest, empty River, remove SeaLake; return the truncated file."""
    import shutil

    bad = folder / "Forest" / "Forest_1.jpg"
    _truncate(bad)
    for image in (folder / "River").iterdir():
        image.unlink()
    shutil.rmtree(folder / "SeaLake")
    return bad


def test_data_check_names_a_truncated_file_and_a_missing_or_empty_class(tmp_path, capsys):
    folder = _eurosat(tmp_path)
    argv = ["data", "check", "mtil", "--datasets", "EuroSAT", "--data-root", str(tmp_path)]
    assert main(argv) == 0
    assert "end of all 20 files read; 20 decoded" in capsys.readouterr().out  # the stated sample: all 20 here
    bad = _damage(folder)
    assert main(argv) == 1
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    named = {row[1]: " ".join(row[2:]) for row in rows if len(row) > 2}
    assert named[str(bad)].startswith("corrupt OSError:") and "runcated" in named[str(bad)], named
    assert named[str(folder / "River")] == "corrupt class folder holds no image"
    assert named[str(folder / "SeaLake")] == "corrupt class folder absent (the class list names it)"


def test_the_pre_run_check_names_a_missing_or_empty_class_folder(tmp_path):
    from runs.config import load_suite
    from runs.machine import check_machine

    _damage(_eurosat(tmp_path / "data"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""
name: eurosat
output_dir: {tmp_path / "out"}
defaults:
  model: {{arch: clip-tiny, pretrained: none}}
  stream: {{name: mtil, datasets: [EuroSAT]}}
  train: {{device: cpu}}
  data_root: {tmp_path / "data"}
  download: true
runs:
  - method: naive
""")
    problems = " | ".join(check_machine(load_suite(suite).runs[0]))
    assert "River corrupt" in problems and "SeaLake corrupt" in problems, problems
