"""Methods describe themselves: a config field's help text and range live on the field
(:mod:`strategies.options`), and the validator, ``--set`` and ``runs list`` read them from there;
``runs/config.py`` knows no method; the option reference page is generated and kept current."""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from runs.config import ConfigError, load_suite
from runs.listing import MARKDOWN_PAGE, format_listing, format_markdown
from strategies.mozo import MoZOConfig
from strategies.mozo.config import check_run
from strategies.mozo.strategy import build_mozo
from strategies.options import Range, option
from strategies.registry import METHODS, MethodSpec

ROOT = Path(__file__).resolve().parents[1]
SUITE = """
name: t
defaults:
  model: {arch: clip-tiny, pretrained: none}
  stream: {name: synthetic, n_classes: 4, n_experiences: 2}
runs:
  - method: {name: mozo_probe, layers: all}
"""
METHOD_PACKAGES = ("strategies.mozo", "strategies.condu", "strategies.baselines")


@dataclass
class _ProbeMoZOConfig(MoZOConfig):
    probe_gain: float = option(0.5, "a made-up option: how hard the probe pushes", range=Range(0, 1))


@pytest.fixture
def probe_method(monkeypatch) -> None:
    """MoZO's spec with one more field on its config dataclass, registered under a test name."""
    monkeypatch.setitem(METHODS, "mozo_probe", MethodSpec(_ProbeMoZOConfig, build_mozo, check=check_run))


def _suite(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_new_field_is_validated_with_its_declared_range(probe_method, tmp_path):
    assert load_suite(_suite(tmp_path)).runs[0].method.cfg.probe_gain == 0.5
    path = _suite(tmp_path, SUITE.replace("layers: all", "layers: all, probe_gain: 0.25"))
    assert load_suite(path).runs[0].method.cfg.probe_gain == 0.25
    path = _suite(tmp_path, SUITE.replace("layers: all", "layers: all, probe_gain: 1.5"))
    with pytest.raises(ConfigError, match=r"suite.yaml: runs\[0\].method.probe_gain = 1.5: must be in \[0, 1\]"):
        load_suite(path)


def test_a_new_field_is_settable_from_the_command_line(probe_method, tmp_path):
    path = _suite(tmp_path)
    assert load_suite(path, overrides=["method.probe_gain=0.75"]).runs[0].method.cfg.probe_gain == 0.75
    with pytest.raises(ConfigError, match=r"runs\[0\].method.probe_gain = -1.0: must be in \[0, 1\]"):
        load_suite(path, overrides=["method.probe_gain=-1"])


def test_a_new_field_is_listed_with_default_range_and_help(probe_method):
    block = format_listing().split("  mozo_probe\n")[1].split("\n  Streams")[0]
    row = next(line for line in block.splitlines() if line.split()[0] == "probe_gain")
    assert row.split()[1:4] == ["0.5", "[0,", "1]"] and row.endswith("a made-up option: how hard the probe pushes")
    assert "| `method.probe_gain` | `float` | `0.5` | `[0, 1]` | a made-up option" in format_markdown()


def test_the_method_check_is_the_specs(probe_method, tmp_path, monkeypatch):
    """The validator runs whatever ``MethodSpec.check`` the method registered, and prefixes file and run."""
    def refuse(run):
        raise ValueError(f"method.probe_gain = {run.method.cfg.probe_gain!r}: refused by the method's own check")

    monkeypatch.setitem(METHODS, "mozo_probe", MethodSpec(_ProbeMoZOConfig, build_mozo, check=refuse))
    with pytest.raises(ConfigError, match=r"suite.yaml: runs\[0\].method.probe_gain = 0.5: refused by the method's"):
        load_suite(_suite(tmp_path))
    assert METHODS["mozo"].check is check_run  # MoZO's layer and probe-precision checks are MoZO's


def _imports(path: Path) -> set[str]:
    """Every module a source file imports, function-level imports included (relative ones resolved
    against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_runs_config_knows_no_method():
    path = ROOT / "runs" / "config.py"
    imported = _imports(path)
    assert not [m for m in imported if m.startswith(METHOD_PACKAGES)], sorted(imported)
    literals = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}
    assert not literals & set(METHODS), sorted(literals & set(METHODS))  # no branch on a method name


def test_the_registry_is_a_leaf():
    imported = _imports(ROOT / "strategies" / "registry.py")
    assert not [m for m in imported if m.startswith(METHOD_PACKAGES)], sorted(imported)
    assert {"mozo", "condu", "lwf", "zeroshot"} <= set(METHODS)  # filled by the package's __init__


def test_every_option_has_help():
    text = format_markdown()
    empty = [line for line in text.splitlines() if line.startswith("| `") and line.rstrip().endswith("|  |")]
    assert not empty, empty


def test_the_committed_option_reference_is_current():
    page = ROOT / MARKDOWN_PAGE
    assert page.is_file() and page.read_text() == format_markdown(), (
        f"{MARKDOWN_PAGE} is stale: regenerate it with `python -m runs list --markdown > {MARKDOWN_PAGE}`")
