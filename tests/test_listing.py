"""`python -m runs list` is generated from the registries and option dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from runs.__main__ import main
from runs.listing import format_listing, option_rows
from strategies.options import option
from strategies.registry import METHODS, MethodSpec


@dataclass
class _ProbeConfig:
    strength: float = option(0.25, "how hard the probe pushes")
    layers: list[int] = option(default_factory=lambda: [1, 3], help="which blocks it touches")


def _build(*args, **kwargs):  # never called: listing only reads the spec
    raise AssertionError("list must not build strategies")


def test_a_method_registered_here_appears_with_defaults_and_meanings(monkeypatch) -> None:
    monkeypatch.setitem(METHODS, "probe_method", MethodSpec(_ProbeConfig, _build, recipe={"lr": 0.5}))
    text = format_listing()
    block = text.split("  probe_method\n")[1].split("\n  ")[0:3]
    assert block[0].split() == ["strength", "0.25", "how", "hard", "the", "probe", "pushes"]
    assert block[1].split()[:3] == ["layers", "[1,", "3]"] and block[1].endswith("which blocks it touches")
    assert "recipe (train.* defaults for this method): {'lr': 0.5}" in text
    assert "probe_method" not in format_listing(methods={k: v for k, v in METHODS.items() if k != "probe_method"})


def test_listing_reads_the_project_dataclasses(capsys) -> None:
    from benchmarks import STREAMS
    from strategies.clip.units import UNIT_KINDS, UnitsConfig

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in [*METHODS, *STREAMS]:
        assert f"\n  {name}\n" in text
    assert f"Unit kinds (model.units.kind): {', '.join(UNIT_KINDS)}" in text
    assert ("lora_rank", "64", "lora: rank r") in option_rows(UnitsConfig)
    assert "eps_vision" in text and "0.0005" in text.split("eps_vision")[1].splitlines()[0]
    assert "Run options: train.KEY" in text and "label_smoothing" in text


def test_nested_option_groups_are_listed_key_by_key():
    from runs.listing import format_listing, format_markdown

    text = format_listing()
    assert "ddas.routing" in text and "ddas.threshold" in text and "DDASConfig()" not in text
    assert "`method.ddas.routing`" in format_markdown()
