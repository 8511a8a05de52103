"""Suite YAML validation: each error names the file, the field and the allowed values; exit code 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runs.__main__ import main
from runs.config import ConfigError, load_suite

BASE = """
name: t
defaults:
  model: {arch: clip-tiny, pretrained: none}
  stream: {name: synthetic, n_classes: 4, n_experiences: 2}
runs:
  - method: naive
"""


def _write(tmp_path, text: str):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_suite_merges_defaults_and_overrides(tmp_path):
    path = _write(tmp_path, BASE + "  - method: {name: ewc, ewc_lambda: 5}\n    train: {lr: 1e-4}\n    name: ewc5\n")
    suite = load_suite(path, overrides=["train.epochs=3"])
    naive, ewc = suite.runs
    assert ewc.name == "ewc5" and ewc.method.cfg.ewc_lambda == 5.0
    assert ewc.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string: accepted for floats
    assert naive.train.lr == pytest.approx(1e-3)  # the TrainConfig default
    assert naive.train.epochs == ewc.train.epochs == 3  # --set beats the YAML
    assert naive.stream.cfg.n_classes == 4 and naive.model.units.kind == "adapter"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE.replace("pretrained: none", "pretrained: none, archh: x"),
         r"suite.yaml: unknown key 'runs\[0\].model.archh'; allowed keys: arch, pretrained, units"),
        (BASE.replace("n_experiences: 2", "n_experiences: two"),
         r"suite.yaml: runs\[0\].stream.n_experiences = 'two': expected int, got str"),
        (BASE.replace("method: naive", "method: nieve"),
         r"suite.yaml: runs\[0\].method.name = 'nieve': unknown; allowed names: .*ewc.*naive"),
        (BASE.replace("name: synthetic", "name: cifar"),
         r"suite.yaml: runs\[0\].stream.name = 'cifar': unknown; allowed names: .*synthetic"),
        (BASE + "  - method: {name: lwf, alpah: 1}\n",
         r"suite.yaml: unknown key 'runs\[1\].method.alpah'; allowed keys: alpha, temperature"),
        (BASE.replace("runs:", "wandb: {mode: loud}\nruns:"),
         r"suite.yaml: wandb.mode = 'loud': allowed values: offline, online, disabled"),
        (BASE.replace("runs:", "seeds: [1]\nruns:"),
         r"suite.yaml: unknown key 'seeds'; allowed keys: defaults, launcher, name, output_dir, runs, wandb"),
        (BASE + "  - method: naive\n", r"suite.yaml: run names must be unique; repeated: naive"),
        (BASE.replace("  stream: {name: synthetic, n_classes: 4, n_experiences: 2}\n", ""),
         r"suite.yaml: runs\[0\] has no 'stream'"),
        (BASE.replace("defaults:", "defaults:\n  train: {label_space: all}"),
         r"runs\[0\].train.label_space = 'all': allowed values: auto, current, seen"),
    ],
)
def test_invalid_suites_name_file_field_and_allowed_values(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        load_suite(path)


def test_validate_cli_exits_2_with_one_message(tmp_path, capsys):
    path = _write(tmp_path, BASE.replace("arch: clip-tiny", "arhc: clip-tiny"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'runs[0].model.arhc'" in err and str(path) in err


def test_validate_cli_accepts_the_shipped_suites(capsys):
    from pathlib import Path

    suites = sorted((Path(__file__).resolve().parents[1] / "runs" / "suites").glob("*.yaml"))
    assert suites
    for suite in suites:
        assert main(["validate", str(suite)]) == 0, suite


def test_method_options_merge_only_within_the_same_method(tmp_path):
    text = BASE.replace("  model:", "  method: {name: lwf, alpha: 0.5}\n  model:").replace(
        "runs:\n  - method: naive\n",
        "runs:\n  - method: {temperature: 3}\n    name: lwf-t3\n  - method: {name: ewc, ewc_lambda: 2}\n",
    )
    suite = load_suite(_write(tmp_path, text))
    lwf, ewc = suite.runs
    assert (lwf.method.name, lwf.method.cfg.alpha, lwf.method.cfg.temperature) == ("lwf", 0.5, 3.0)
    assert ewc.method.name == "ewc" and ewc.method.cfg.ewc_lambda == 2.0  # no 'alpha' leaked into ewc


def test_method_recipe_sits_between_defaults_and_yaml(tmp_path):
    text = BASE.replace("method: naive", "method: condu\n    model: {units: {kind: lora}}") + (
        "  - method: condu\n    name: condu-short\n    model: {units: {kind: lora}}\n    train: {iterations: 5}\n"
    )
    recipe, short = load_suite(_write(tmp_path, text)).runs
    assert recipe.train.label_smoothing == 0.2 and recipe.train.iterations == 1000  # ConDU's recipe
    assert short.train.iterations == 5 and short.train.label_smoothing == 0.2  # YAML beats the recipe


def test_set_applies_a_method_option_to_the_runs_that_have_it_and_scopes_to_only():
    smoke = Path(__file__).resolve().parents[1] / "runs" / "suites" / "smoke.yaml"
    suite = load_suite(smoke, ["method.alpha=2", "suite.wandb.project=p", "ewc:method.ewc_lambda=3"])
    runs = {r.name: r for r in suite.runs}
    assert runs["lwf"].method.cfg.alpha == 2.0 and suite.wandb.project == "p"
    assert runs["ewc"].method.cfg.ewc_lambda == 3.0
    scoped = load_suite(smoke, ["train.lr=0.5"], only=["naive"])
    assert [r.train.lr for r in scoped.runs if r.name == "naive"] == [0.5]
    assert all(r.train.lr == 0.01 for r in scoped.runs if r.name != "naive")
    with pytest.raises(ConfigError, match="no selected run has option 'method.alpha'"):
        load_suite(smoke, ["method.alpha=2"], only=["naive"])
