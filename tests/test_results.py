"""[results]: every number belongs to its config — fingerprints, refusals, re-runs, failed marks,
provenance, W&B ids, exit codes. Runs are tiny (2 experiences, 4 synthetic classes)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from runs.__main__ import main
from runs.config import load_suite
from runs.fingerprint import NOT_FINGERPRINTED, fingerprint, git_info
from runs.runner import RefusedError, RunSession, run_suite

TINY = """
name: tiny
output_dir: {out}
wandb: {{mode: offline, project: clip-cl-tests}}
defaults:
  model: {{arch: clip-tiny, pretrained: none, units: {{kind: adapter, bottleneck: 8, dropout: 0.0}}}}
  stream: {{name: synthetic, n_classes: 4, n_experiences: 2, train_per_class: 8, test_per_class: 4}}
  train: {{epochs: 1, batch_size: 8, lr: 0.01, warmup: 1, device: cpu}}
  seeds: [0]
runs:
  - method: zeroshot
  - method: naive
{extra}"""


def write_suite(tmp_path: Path, extra: str = "", name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(TINY.format(out=tmp_path / "out", extra=extra))
    return path


@pytest.fixture
def finished(tmp_path):
    """A tiny suite run once (zeroshot + naive finished)."""
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    return path


def _folder(tmp_path: Path, run: str = "naive-seed0", out: str = "out") -> Path:
    return tmp_path / out / "tiny" / run


def test_unchanged_rerun_skips_every_run_quickly(finished, tmp_path):
    before = json.loads((_folder(tmp_path) / "metrics.json").read_text())
    tic = time.time()
    assert main(["run", str(finished)]) == 0
    assert time.time() - tic < 10  # nothing trains (the budget covers imports on a loaded 2-core machine)
    assert json.loads((_folder(tmp_path) / "metrics.json").read_text()) == before


def test_edited_suite_refuses_naming_the_changed_field(finished, tmp_path, capsys):
    finished.write_text(finished.read_text().replace("lr: 0.01", "lr: 0.05"))
    snapshot = _mtimes(tmp_path / "out")
    assert main(["run", str(finished)]) == 2
    err = capsys.readouterr().err
    assert "naive-seed0: train.lr 0.01 -> 0.05" in err and "--rerun-changed" in err
    assert _mtimes(tmp_path / "out") == snapshot


def _mtimes(folder: Path) -> dict[Path, int]:
    """The files under ``folder``; links are left out (W&B's ``logs/debug-core.log`` links to the W&B
    service's own log under ``~/.cache/wandb``, which the service writes whenever it likes)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def test_set_on_a_finished_run_refuses(finished, capsys):
    assert main(["run", str(finished), "--only", "naive", "--set", "train.lr=0.05"]) == 2
    assert "naive-seed0: train.lr 0.01 -> 0.05" in capsys.readouterr().err


def test_rerun_changed_moves_the_old_folder_out_of_the_table(finished, tmp_path):
    old = json.loads((_folder(tmp_path) / "metrics.json").read_text())
    assert main(["run", str(finished), "--set", "naive:train.lr=0.05", "--rerun-changed"]) == 0
    superseded = list((tmp_path / "out" / "tiny" / ".superseded").iterdir())
    assert [p.name for p in superseded] == [f"naive-seed0-{old['fingerprint']}"]
    assert json.loads((superseded[0] / "metrics.json").read_text()) == old  # kept as it was
    new = json.loads((_folder(tmp_path) / "metrics.json").read_text())
    assert new["fingerprint"] != old["fingerprint"]
    rows = [line for line in (tmp_path / "out" / "tiny" / "runs.csv").read_text().splitlines()[1:]]
    assert len(rows) == 2 and sum(line.startswith("naive-seed0,") for line in rows) == 1
    assert old["fingerprint"] not in (tmp_path / "out" / "tiny" / "runs.csv").read_text()


class _Stop(KeyboardInterrupt):
    pass


def _interrupt_after_first_experience(monkeypatch):
    original = RunSession._save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise _Stop("simulated kill after experience 0")

    monkeypatch.setattr(RunSession, "_save_checkpoint", save_then_stop)


def test_resume_under_a_changed_config_refuses_before_loading_the_checkpoint(tmp_path, monkeypatch):
    path = write_suite(tmp_path)
    _interrupt_after_first_experience(monkeypatch)
    with pytest.raises(_Stop):
        run_suite(load_suite(path, only=["naive"]), only=["naive"])
    monkeypatch.undo()
    ckpt = _folder(tmp_path) / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    loads = []
    monkeypatch.setattr("runs.checkpoint.load", lambda p: loads.append(p))
    for change in ("train.lr=0.5", "stream.n_experiences=4", "model.units.bottleneck=16"):
        with pytest.raises(RefusedError, match="naive-seed0: "):
            run_suite(load_suite(path, [change], only=["naive"]), only=["naive"])
    assert loads == [] and ckpt.stat().st_mtime_ns == stamp
    assert "lr: 0.01" in (_folder(tmp_path) / "config.yaml").read_text()  # config.yaml still the run's own


def test_wandb_ids_are_unique_per_folder_and_kept_on_resume(tmp_path, monkeypatch):
    path = write_suite(tmp_path)
    ids = {}
    for out in ("a", "b"):
        suite = load_suite(path, only=["naive"], output_dir=str(tmp_path / out))
        run_suite(suite, only=["naive"])
        meta = json.loads((_folder(tmp_path, out=out) / "fingerprint.json").read_text())
        ids[out] = meta["wandb_id"]
        assert meta["wandb_id"].startswith("tiny-naive-seed0-")
        runs = list((_folder(tmp_path, out=out) / "wandb").glob("offline-run-*"))
        assert [p.name.endswith(meta["wandb_id"]) for p in runs] == [True]
    assert ids["a"] != ids["b"]
    # a resumed folder keeps its id
    suite = load_suite(path, only=["naive"], output_dir=str(tmp_path / "c"))
    _interrupt_after_first_experience(monkeypatch)
    with pytest.raises(_Stop):
        run_suite(suite, only=["naive"])
    monkeypatch.undo()
    first = json.loads((_folder(tmp_path, out="c") / "fingerprint.json").read_text())["wandb_id"]
    run_suite(suite, only=["naive"])
    record = json.loads((_folder(tmp_path, out="c") / "metrics.json").read_text())
    assert record["wandb_id"] == first
    sessions = list((_folder(tmp_path, out="c") / "wandb").glob("offline-run-*"))
    # both sessions carry the one id (W&B adds "-1" when two sessions start within one second)
    assert len(sessions) == 2 and all(re.search(rf"-{first}(-\d+)?$", p.name) for p in sessions)


def test_entity_and_fingerprint_reach_wandb_init(tmp_path, monkeypatch):
    import wandb

    calls = []
    real = wandb.init

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(wandb, "init", spy)
    path = write_suite(tmp_path)
    suite = load_suite(path, ["suite.wandb.entity=my-team"], only=["naive"])
    run_suite(suite, only=["naive"])
    (seen,) = [c for c in calls if c.get("name") == "naive-seed0"]
    assert seen["entity"] == "my-team"
    assert all(c["entity"] == "my-team" for c in calls)  # the suite-level run too
    record = json.loads((_folder(tmp_path) / "metrics.json").read_text())
    assert seen["id"] == record["wandb_id"]
    assert seen["config"]["fingerprint"] == record["fingerprint"]
    assert seen["config"]["provenance"]["packages"]["torch"] == record["provenance"]["packages"]["torch"]


def test_provenance_is_recorded(finished, tmp_path):
    record = json.loads((_folder(tmp_path) / "metrics.json").read_text())
    prov = record["provenance"]
    assert len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool)  # inside this checkout
    assert set(prov["packages"]) >= {"torch", "avalanche-lib", "open_clip_torch", "wandb"}
    assert prov["host"] and prov["device"] == "cpu" and prov["start"] and prov["end"]
    sessions = json.loads((_folder(tmp_path) / "provenance.json").read_text())["sessions"]
    assert sessions[-1]["status"] == "finished"
    assert git_info(tmp_path) == {"commit": "unknown", "dirty": None}  # outside a git checkout


def test_fingerprint_covers_every_field_but_the_listed_ones():
    suite = load_suite(Path(__file__).parents[1] / "runs" / "suites" / "smoke.yaml")
    base = {"train": {"lr": 0.01, "new_field": 1}, "data_root": "a", "download": True,
            "model": {"cache_dir": "x", "arch": "a"}, "method": {"name": "mozo", "log_every": 1}}
    fp = fingerprint(base)
    for path in ("data_root", "download", "model.cache_dir", "method.log_every", "name", "reference"):
        assert path in NOT_FINGERPRINTED
    moved = json.loads(json.dumps(base))
    moved.update(data_root="b", download=False)
    moved["model"]["cache_dir"] = "y"
    moved["method"]["log_every"] = 9
    assert fingerprint(moved) == fp
    for key, value in (("new_field", 2), ("lr", 0.02)):
        changed = json.loads(json.dumps(base))
        changed["train"][key] = value
        assert fingerprint(changed) != fp, key
    assert suite.runs  # the shipped suite loads


def test_folder_from_before_fingerprints_counts_as_changed(finished, tmp_path, capsys):
    (_folder(tmp_path) / "fingerprint.json").unlink()
    assert main(["run", str(finished)]) == 2
    assert "naive-seed0: the folder has no readable fingerprint.json" in capsys.readouterr().err


def test_failed_run_is_marked_skipped_and_rerun_on_request(tmp_path, capsys):
    path = write_suite(tmp_path, "  - {method: naive, name: naive-hot, train: {lr: 1.0e+12}}\n")
    assert main(["run", str(path)]) == 1
    captured = capsys.readouterr()
    failed = json.loads((_folder(tmp_path, "naive-hot-seed0") / "failed.json").read_text())
    assert "non-finite training loss at experience 0" in failed["reason"] and failed["experience"] == 0
    assert Path(failed["log"]).read_text().count("DivergedError") >= 1  # the traceback is in log.txt
    assert "naive-hot-seed0" in captured.err and "log.txt" in captured.err
    table = (tmp_path / "out" / "tiny" / "results.md").read_text()
    hot = next(line for line in table.splitlines() if line.startswith("| naive-hot"))
    cells = [c.strip() for c in hot.split("|")[1:-1]]
    assert cells[5:] and all(c == "failed" for c in cells[5:]), cells  # never numbers
    assert (_folder(tmp_path) / "metrics.json").exists()  # the healthy run finished with numbers
    # the next run skips it and lists it as failed (exit 1); --rerun-failed restarts it from scratch
    assert main(["run", str(path)]) == 1
    assert "failed earlier" in capsys.readouterr().err
    assert main(["run", str(path), "--rerun-failed"]) == 1  # still diverges, but it did run again
    assert len(list((tmp_path / "out" / "tiny" / ".superseded").iterdir())) == 1


@pytest.mark.parametrize("argv, code", [
    (["run", "{suite}", "--only", "naiv"], 2),
    (["validate", "{suite}"], 0),
    (["validate", "{suite}", "--set", "train.lr=-1"], 2),
    (["report", "{tmp}/nowhere"], 2),
    (["report", "{tmp}"], 2),
    (["data", "check", "no_such_stream"], 2),
    (["data", "check", "split_cifar100", "--data-root", "{tmp}"], 1),
    (["data", "check", "synthetic"], 0),
    (["bogus-command"], 2),
])
def test_exit_codes_follow_the_table(tmp_path, argv, code, capsys):
    suite = write_suite(tmp_path)
    args = [a.format(suite=suite, tmp=tmp_path) for a in argv]
    assert main(args) == code
    if code == 2 and argv[0] != "bogus-command":
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()


def test_unknown_only_name_lists_the_runs(tmp_path, capsys):
    suite = write_suite(tmp_path)
    assert main(["run", str(suite), "--only", "naiv"]) == 2
    assert "--only 'naiv': no such run; runs: zeroshot, naive" in capsys.readouterr().err


def test_help_lists_every_command_and_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("run", "validate", "report", "share", "list", "status", "data", "bench", "130",
                 "refused before any work"):
        assert word in text
