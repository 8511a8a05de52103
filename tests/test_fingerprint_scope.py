"""[workflow] What a fingerprint covers: one (run, seed) plus the config parts its method reads.

Adding a seed runs only the new one, removing one leaves its folder out of the table; a training-only
field leaves a zero-shot run finished; a folder written under the older fingerprint format (whole
config, seed list included) stays finished when it differs only in what the new fingerprint no
longer covers, or in a field added since that holds its default. Runs are tiny (synthetic stream).
"""

from __future__ import annotations

import json
from pathlib import Path

from runs.__main__ import main
from runs.config import load_suite, to_plain
from runs.fingerprint import fingerprint, fingerprinted
from runs.runkey import keys_of
from strategies.registry import METHODS, SECTIONS

TINY = """
name: tiny
output_dir: {out}
wandb: {{mode: disabled}}
defaults:
  model: {{arch: clip-tiny, pretrained: none, units: {{kind: adapter, bottleneck: 8, dropout: 0.0}}}}
  stream: {{name: synthetic, n_classes: 4, n_experiences: 2, train_per_class: 8, test_per_class: 4}}
  train: {{epochs: 1, batch_size: 8, lr: 0.01, warmup: 1, device: cpu}}
  seeds: {seeds}
runs:
  - method: zeroshot
  - method: naive
"""


def write_suite(tmp_path: Path, seeds: str = "[0]") -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(TINY.format(out=tmp_path / "out", seeds=seeds))
    return path


def _table(tmp_path: Path) -> str:
    return (tmp_path / "out" / "tiny" / "runs.csv").read_text()


def test_adding_a_seed_runs_only_the_new_one_and_removing_it_leaves_its_folder_out(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    first = (tmp_path / "out" / "tiny" / "naive-seed0" / "metrics.json").read_text()
    write_suite(tmp_path, "[0, 1]")
    assert main(["run", str(path)]) == 0  # before: refused, naive-seed0: seeds [0] -> [0, 1]
    assert (tmp_path / "out" / "tiny" / "naive-seed0" / "metrics.json").read_text() == first  # not re-run
    assert "naive-seed1" in _table(tmp_path)
    write_suite(tmp_path, "[0]")
    capsys.readouterr()
    assert main(["run", str(path)]) == 0  # nothing refused
    assert "naive-seed1" not in _table(tmp_path) and "naive-seed0" in _table(tmp_path)
    assert (tmp_path / "out" / "tiny" / "naive-seed1" / "metrics.json").exists()  # kept on disk
    assert main(["status", str(path)]) == 0
    assert "changed" not in capsys.readouterr().out


def test_a_training_only_field_leaves_a_zero_shot_run_finished(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0
    path.write_text(path.read_text().replace("lr: 0.01", "lr: 0.05"))
    assert main(["run", str(path), "--only", "zeroshot"]) == 0  # before: zeroshot-seed0: train.lr ...
    assert main(["run", str(path)]) == 2  # naive trains: it reads train.lr
    assert "naive-seed0: train.lr 0.01 -> 0.05" in capsys.readouterr().err


def test_methods_declare_what_they_read():
    assert all(r.split(".")[0] in SECTIONS for spec in METHODS.values() for r in spec.reads)
    zeroshot = METHODS["zeroshot"].reads
    assert "train" not in zeroshot and not {"train.lr", "train.epochs", "train.optimizer"} & set(zeroshot)
    assert {"model", "stream", "method", "eval"} <= set(zeroshot)
    rail = METHODS["rail"].reads  # training-free, but its fit reads the training data in minibatches
    assert "train" not in rail and {"train.batch_size", "train.augment"} <= set(rail) and "train.lr" not in rail
    assert METHODS["naive"].reads == SECTIONS


def _old_format(tmp_path: Path, run: str, edit=None) -> None:
    """Rewrite a finished folder as the code before this change wrote it: the fingerprint over the whole
    config (the seed list included), ``metrics.json`` carrying that fingerprint."""
    suite = load_suite(tmp_path / "suite.yaml")
    key = next(k for k in keys_of(suite) if k.id == run)
    config = to_plain(key.run) | {"seed": key.seed}
    stored = fingerprinted(config)  # the old format: every field but NOT_FINGERPRINTED
    if edit is not None:
        edit(stored)
    old_fp = fingerprint(stored)
    assert old_fp != key.fingerprint and "seeds" in stored
    folder = tmp_path / "out" / "tiny" / run
    meta = json.loads((folder / "fingerprint.json").read_text())
    (folder / "fingerprint.json").write_text(json.dumps(meta | {"fingerprint": old_fp, "config": stored}))
    record = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps(record | {"fingerprint": old_fp}))


def test_folders_of_the_old_fingerprint_format_stay_finished(tmp_path, capsys):
    path = write_suite(tmp_path)
    assert main(["run", str(path)]) == 0

    def field_added_since(stored):  # a field that did not exist then and now holds its default
        del stored["eval"]["task_aware"]
        del stored["stream"]["signal"]

    _old_format(tmp_path, "naive-seed0", field_added_since)
    _old_format(tmp_path, "zeroshot-seed0")
    before = (tmp_path / "out" / "tiny" / "naive-seed0" / "metrics.json").read_text()
    capsys.readouterr()
    assert main(["run", str(path)]) == 0  # no --rerun-changed needed
    out = capsys.readouterr().out
    assert "naive" in out and "zeroshot" in out  # both rows in the table
    assert (tmp_path / "out" / "tiny" / "naive-seed0" / "metrics.json").read_text() == before
    assert "naive-seed0" in _table(tmp_path) and "zeroshot-seed0" in _table(tmp_path)
    assert main(["status", str(path)]) == 0
    assert "2 finished" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "out" / "tiny")]) == 0  # from the folder (.plan.json) too
    assert "2 finished" in capsys.readouterr().out
    # a field absent from the old folder whose value is not its default is a change
    _old_format(tmp_path, "naive-seed0", lambda stored: stored["train"].pop("lr"))
    assert main(["run", str(path)]) == 2
    assert "naive-seed0: train.lr (absent) -> 0.01" in capsys.readouterr().err


def test_mtil_without_its_new_datasets_field_is_the_same_run():
    suite = load_suite(Path(__file__).parents[1] / "runs" / "suites" / "mtil.yaml")
    key = keys_of(suite)[0]
    stored = fingerprinted(to_plain(key.run) | {"seed": key.seed})  # the old format
    assert stored["stream"].pop("datasets") is None  # written before stream.datasets existed
    assert key.differences(stored) == []
    stored["stream"]["order"] = "II" if stored["stream"].get("order") != "II" else "I"
    assert key.differences(stored)


def test_outputs_page_lists_what_each_method_reads():
    page = (Path(__file__).parents[1] / "docs" / "outputs.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in page.splitlines() if line.startswith("| `")}
    for name, spec in METHODS.items():
        if tuple(spec.reads) == SECTIONS:
            assert f"`{name}`" in page, name
            continue
        row = rows[f"`{name}`"]
        parts = set(spec.reads) - set(METHODS["zeroshot"].reads) if "as `zeroshot`" in row else spec.reads
        for part in parts:
            assert f"`{part.split('.')[-1]}`" in row, (name, part)
