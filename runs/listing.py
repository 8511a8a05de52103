"""``python -m runs list``: every method, stream and unit kind with its options, defaults and ranges.

Generated at call time from the registries the config loader validates against
(``strategies.registry.METHODS``, ``benchmarks.STREAMS``, ``strategies.clip.units.UNIT_KINDS``) and
from the option dataclasses themselves: a field's default is the dataclass default (or its
``default_factory()``), its meaning and allowed range its ``option(..., help, range=...)`` metadata
(:mod:`strategies.options`). A method or stream registered by a plugin package appears without any
change here. :func:`format_markdown` renders the same data as the option reference page
(``python -m runs list --markdown``, committed as ``docs/reference/options.md``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from benchmarks import STREAMS
from strategies.clip import ModelConfig, UnitsConfig
from strategies.clip.units import UNIT_KINDS
from strategies.options import help_of, range_of
from strategies.registry import METHODS
from strategies.training import TrainConfig

from .config import MAX_INT, EvalConfig, LauncherConfig, WandbConfig

MARKDOWN_PAGE = "docs/reference/options.md"  # the committed output of format_markdown()


@dataclasses.dataclass(frozen=True)
class OptionRow:
    """One option of a config dataclass, as ``runs list`` and the reference page show it."""

    key: str
    type: str  # the annotation, readable: "int | None", "'adamw' | 'sgd'"
    default: str  # repr of the default (or of default_factory())
    range: str  # the declared range, "[0, inf]" for an int field without one (the validator's rule), or ""
    help: str


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if isinstance(field.default_factory, type) and dataclasses.is_dataclass(field.default_factory):
        return f"{field.default_factory.__name__}()"  # a nested group, listed on its own
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(required)"


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_text(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _holds_int(tp: Any) -> bool:
    """Does a value of this annotation contain ints that the validator range-checks (bool excluded)?"""
    if tp is int:
        return True
    return any(_holds_int(a) for a in typing.get_args(tp) if typing.get_origin(tp) is not Literal)


def _range(field: dataclasses.Field, tp: Any) -> str:
    declared = range_of(field)
    if declared is not None:
        return str(declared)
    return "[0, inf]" if _holds_int(tp) else ""


def option_table(cls: type, *, expand: bool = False, prefix: str = "") -> list[OptionRow]:
    """Every init field of the option dataclass ``cls`` with its type, default, range and help; with
    ``expand``, a nested option group (a dataclass-typed field, e.g. MoE-Adapters' ``ddas``) is listed
    key by key as ``group.key`` instead of one ``Group()`` row."""
    hints = typing.get_type_hints(cls)
    rows: list[OptionRow] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if expand and isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows += option_table(tp, expand=True, prefix=f"{prefix}{f.name}.")
            continue
        rows.append(OptionRow(prefix + f.name, _type_text(tp), _default(f), _range(f, tp), help_of(f)))
    return rows


def option_rows(cls: type) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` for every init field of the option dataclass ``cls``."""
    return [(row.key, row.default, row.help) for row in option_table(cls)]


def _options(cls: type, indent: str = "    ", *, expand: bool = False) -> list[str]:
    rows = option_table(cls, expand=expand)
    if not rows:
        return [f"{indent}(no options)"]
    key_w = max(len(r.key) for r in rows)
    default_w = min(max(len(r.default) for r in rows), 28)
    range_w = max(len(r.range) for r in rows)
    return [f"{indent}{r.key:<{key_w}}  {r.default:<{default_w}}  {r.range:<{range_w}}  {r.help}".rstrip()
            for r in rows]


def _section(title: str, registry: Mapping[str, Any], extra: Any = None) -> list[str]:
    lines = [title]
    for name in sorted(registry):
        spec = registry[name]
        lines.append(f"  {name}")
        lines += _options(spec.config, expand=True)
        if extra is not None:
            lines += extra(spec)
    return lines


def _recipe(spec: Any) -> list[str]:
    recipe = getattr(spec, "recipe", None)
    return [f"    recipe (train.* defaults for this method): {recipe}"] if recipe else []


def _registries(methods: Mapping[str, Any] | None, streams: Mapping[str, Any] | None) -> tuple[Mapping, Mapping]:
    return (METHODS if methods is None else methods), (STREAMS if streams is None else streams)


def _run_sections() -> list[tuple[str, type]]:
    """``(YAML prefix, dataclass)`` of the run-level and suite-level option groups."""
    return [("model", ModelConfig), ("train", TrainConfig), ("eval", EvalConfig), ("wandb", WandbConfig),
            ("launcher", LauncherConfig)]


def format_listing(methods: Mapping[str, Any] | None = None, streams: Mapping[str, Any] | None = None) -> str:
    """The text ``python -m runs list`` prints (registries default to the project's)."""
    methods, streams = _registries(methods, streams)
    lines = ["Options: KEY  DEFAULT  RANGE  MEANING (RANGE: allowed values of numbers, [ ] inclusive)", ""]
    lines += _section("Methods (YAML: method: NAME or method: {name: NAME, KEY: VALUE})", methods, _recipe)
    lines += [""] + _section("Streams (YAML: stream: NAME or stream: {name: NAME, KEY: VALUE})", streams)
    lines += ["", f"Unit kinds (model.units.kind): {', '.join(UNIT_KINDS)}", "  options (model.units.KEY):"]
    lines += _options(UnitsConfig)
    for title, cls in _run_sections()[:3]:
        lines += ["", f"Run options: {title}.KEY"] + _options(cls, "  ")
    return "\n".join(lines) + "\n"


# ---- the option reference page ------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(cls: type, prefix: str, *, expand: bool = False) -> list[str]:
    rows = option_table(cls, expand=expand)
    if not rows:
        return ["No options.", ""]
    lines = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"`{prefix}{r.key}`", f"`{r.type}`", f"`{r.default}`", f"`{r.range}`" if r.range else "",
                 r.help]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines + [""]


def _md_components(title: str, yaml_key: str, registry: Mapping[str, Any]) -> list[str]:
    lines = [f"## {title}", "", f"YAML: `{yaml_key}: NAME` or `{yaml_key}: {{name: NAME, KEY: VALUE}}`.", ""]
    for name in sorted(registry):
        spec = registry[name]
        lines += [f"### `{name}`", ""]
        recipe = getattr(spec, "recipe", None)
        if recipe:
            lines += ["Training recipe (`train.*` defaults for this method, under the suite's own values): "
                      + ", ".join(f"`{k}: {v!r}`" for k, v in recipe.items()) + ".", ""]
        lines += _md_table(spec.config, f"{yaml_key}.", expand=True)
    return lines


def format_markdown(methods: Mapping[str, Any] | None = None, streams: Mapping[str, Any] | None = None) -> str:
    """The option reference page: every method, stream, unit and run option with type, default, range
    and meaning, generated from the option dataclasses (``python -m runs list --markdown``)."""
    methods, streams = _registries(methods, streams)
    lines = [
        "# Option reference", "",
        "<!-- Generated by `python -m runs list --markdown` from the option dataclasses; do not edit by hand "
        f"(tests/test_self_describing.py fails when {MARKDOWN_PAGE} is stale). -->", "",
        "Every key a suite YAML accepts below `method:`, `stream:`, `model:`, `train:`, `eval:`, `wandb:` and "
        "`launcher:`, with its default. *Range* is the interval a number must lie in (`[` `]` inclusive, "
        "`(` `)` exclusive; applied to each item of a list or mapping); an int option without a declared "
        f"range must be >= 0, and every int of a suite (seeds included) at most 2^32 − 1 = {MAX_INT}. A "
        "method's training recipe replaces `train.*` defaults for that method; "
        "precedence: defaults < method recipe < `defaults:` < the run's entry < `--set`.", "",
    ]
    lines += _md_components("Methods", "method", methods)
    lines += _md_components("Streams", "stream", streams)
    lines += ["## Trainable units", "", f"`model.units.kind`: {', '.join(f'`{k}`' for k in UNIT_KINDS)}.", ""]
    lines += _md_table(UnitsConfig, "model.units.")
    lines += ["## Run and suite options", ""]
    for title, cls in _run_sections():
        lines += [f"### `{title}`", ""] + _md_table(cls, f"{title}.")
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = ["MARKDOWN_PAGE", "OptionRow", "format_listing", "format_markdown", "option_rows", "option_table"]
