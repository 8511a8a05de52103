"""[faults] issue 21: nothing is followed out of the output folder, damaged or wrong-typed side files,
environments that refuse, damaged data named. Tiny in-process suites (2 experiences, 4 classes)."""

from __future__ import annotations

import errno
import json
import os

import pytest
from test_results import _folder, write_suite

from runs.__main__ import main
from runs.io import OutputError, atomic_write_text, open_append


# ---- item 2: symbolic links ------------------------------------------------------------------------
def test_open_append_and_atomic_write_never_follow_a_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    (tmp_path / "log.txt").symlink_to(outside)
    with pytest.raises(OutputError, match="symbolic link"):
        open_append(tmp_path / "log.txt")
    (tmp_path / f".metrics.json.tmp-{os.getpid()}").symlink_to(outside)
    atomic_write_text(tmp_path / "metrics.json", "{}")  # the planted temporary link is not written through
    assert outside.read_text() == "mine\n" and (tmp_path / "metrics.json").read_text() == "{}"


def test_a_resumed_run_whose_log_is_a_symlink_does_not_append_outside(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path), "--only", "naive"]) == 0
    folder = _folder(tmp_path)
    (folder / "metrics.json").unlink()  # in progress again: the next run resumes (appends to log.txt)
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    (folder / "log.txt").unlink()
    (folder / "log.txt").symlink_to(outside)
    assert main(["run", str(path), "--only", "naive"]) != 0
    assert outside.read_text() == "mine\n"
    assert "symbolic link" in capsys.readouterr().err


def test_a_run_folder_that_is_a_symlink_is_refused_naming_it(tmp_path, capsys):
    path = write_suite(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    suite_dir = tmp_path / "out" / "tiny"
    suite_dir.mkdir(parents=True)
    (suite_dir / "naive-seed0").symlink_to(elsewhere, target_is_directory=True)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "naive-seed0" in err[0] and "symbolic link" in err[0], err
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in suite_dir.iterdir()) == ["naive-seed0"]  # nothing written


# ---- item 7: full disk / read-only clean-up ---------------------------------------------------------
def test_a_clean_up_that_fails_on_a_read_only_file_system_does_not_hide_the_cause(tmp_path, monkeypatch):
    from pathlib import Path

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "fsync", no_space)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OutputError, match="no space left on device"):
        atomic_write_text(tmp_path / "x.json", "{}")


def test_metrics_json_is_valid_json_after_the_toolkit_writes_it(tmp_path):
    path = write_suite(tmp_path)
    assert main(["run", str(path), "--only", "zeroshot"]) == 0
    assert json.loads((_folder(tmp_path, "zeroshot-seed0") / "metrics.json").read_text())["status"] == "finished"


# ---- item 3: wrong-typed side files -----------------------------------------------------------------
def test_provenance_with_sessions_not_a_list_is_moved_aside_and_the_run_goes_on(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path), "--only", "naive"]) == 0
    folder = _folder(tmp_path)
    (folder / "metrics.json").unlink()
    (folder / "provenance.json").write_text(json.dumps({"sessions": 5}))
    assert main(["run", str(path), "--only", "naive"]) == 0
    assert list(folder.glob("provenance.json.corrupt-*")) and "Traceback" not in capsys.readouterr().err


def test_fingerprint_json_of_the_wrong_shape_is_reported_by_name_not_a_traceback(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    (_folder(tmp_path) / "fingerprint.json").write_text(json.dumps({"fingerprint": "x", "config": "oops"}))
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "naive-seed0" in out and "changed" in out and "fingerprint.json" in out
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "naive-seed0" in err[0] and "Traceback" not in err[0]


def test_a_file_where_a_run_folder_belongs_is_named_by_run_and_status(tmp_path, capsys):
    path = write_suite(tmp_path)
    suite_dir = tmp_path / "out" / "tiny"
    suite_dir.mkdir(parents=True)
    (suite_dir / "naive-seed0").write_text("not a folder")
    assert main(["status", str(path)]) == 0
    assert "a file stands where the run folder belongs" in capsys.readouterr().out
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a file stands where the run folder belongs" in err[0]


# ---- item 7: status never writes ---------------------------------------------------------------------
def test_status_leaves_a_damaged_metrics_json_in_place(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    metrics = _folder(tmp_path) / "metrics.json"
    metrics.write_bytes(b"{torn")
    before = sorted(p.name for p in _folder(tmp_path).iterdir())
    assert main(["status", str(path)]) == 0
    assert sorted(p.name for p in _folder(tmp_path).iterdir()) == before and metrics.read_bytes() == b"{torn"


def test_run_online_without_a_wandb_login_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_suite(tmp_path)
    assert main(["run", str(path), "--online"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb login" in err[0] and "--online" in err[0], err
    assert not (tmp_path / "out").exists()
