"""``python -m runs list``: every method, stream and unit kind with its options and defaults.

Generated at call time from the registries the config loader validates against
(``strategies.registry.METHODS``, ``benchmarks.STREAMS``, ``strategies.clip.units.UNIT_KINDS``) and
from the option dataclasses themselves: a field's default is the dataclass default (or its
``default_factory()``), its meaning the one-line comment after the field in the source. A method or
stream registered by a plugin package appears without any change here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any

_FIELD_COMMENT = re.compile(r"^\s*(\w+)\s*:[^#]*#\s*(.+?)\s*$")


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """``{field name: its trailing comment}`` from the dataclass source (empty without source)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):  # built dynamically or without a source file
            continue
        for line in lines:
            match = _FIELD_COMMENT.match(line)
            if match:
                comments[match.group(1)] = match.group(2)
    return comments


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(required)"


def option_rows(cls: type) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` for every init field of the option dataclass ``cls``."""
    comments = field_comments(cls)
    return [(f.name, _default(f), comments.get(f.name, "")) for f in dataclasses.fields(cls) if f.init]


def _options(cls: type, indent: str = "    ") -> list[str]:
    rows = option_rows(cls)
    if not rows:
        return [f"{indent}(no options)"]
    key_w = max(len(k) for k, _, _ in rows)
    default_w = min(max(len(d) for _, d, _ in rows), 28)
    return [f"{indent}{k:<{key_w}}  {d:<{default_w}}  {m}".rstrip() for k, d, m in rows]


def _section(title: str, registry: Mapping[str, Any], extra: Any = None) -> list[str]:
    lines = [title]
    for name in sorted(registry):
        spec = registry[name]
        lines.append(f"  {name}")
        lines += _options(spec.config)
        if extra is not None:
            lines += extra(spec)
    return lines


def _recipe(spec: Any) -> list[str]:
    recipe = getattr(spec, "recipe", None)
    return [f"    recipe (train.* defaults for this method): {recipe}"] if recipe else []


def format_listing(methods: Mapping[str, Any] | None = None, streams: Mapping[str, Any] | None = None) -> str:
    """The text ``python -m runs list`` prints (registries default to the project's)."""
    from benchmarks import STREAMS
    from strategies.clip import ModelConfig, UnitsConfig
    from strategies.clip.units import UNIT_KINDS
    from strategies.registry import METHODS
    from strategies.training import TrainConfig

    from .config import EvalConfig

    methods = METHODS if methods is None else methods
    streams = STREAMS if streams is None else streams
    lines = _section("Methods (YAML: method: NAME or method: {name: NAME, KEY: VALUE})", methods, _recipe)
    lines += [""] + _section("Streams (YAML: stream: NAME or stream: {name: NAME, KEY: VALUE})", streams)
    lines += ["", f"Unit kinds (model.units.kind): {', '.join(UNIT_KINDS)}", "  options (model.units.KEY):"]
    lines += _options(UnitsConfig)
    for title, cls in (("model", ModelConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        lines += ["", f"Run options: {title}.KEY"] + _options(cls, "  ")
    return "\n".join(lines) + "\n"


__all__ = ["field_comments", "format_listing", "option_rows"]
