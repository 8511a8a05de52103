"""Self-describing options: a config dataclass field carries its help text and allowed range.

``x: float = option(1e-3, "the ZO step size", range=Range(0, None, low_closed=False))`` is an ordinary
``dataclasses.field`` whose ``metadata`` holds ``{"help": ..., "range": Range(...)}`` (PEFT's
``LoraConfig`` style). The suite validator (``runs.config``), ``python -m runs list`` and the generated
option reference read them from there, so a new field needs no edit anywhere else. Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

HELP = "help"
RANGE = "range"


@dataclass(frozen=True)
class Range:
    """Numeric bounds of a field (``None``: unbounded); applied element-wise to lists and dict values."""

    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = True

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        too_low = self.low is not None and (value < self.low if self.low_closed else value <= self.low)
        too_high = self.high is not None and (value > self.high if self.high_closed else value >= self.high)
        return not (too_low or too_high)

    def __str__(self) -> str:
        left = "[" if self.low_closed else "("
        right = "]" if self.high_closed else ")"
        low = "-inf" if self.low is None else _num(self.low)
        high = "inf" if self.high is None else _num(self.high)
        return f"{left}{low}, {high}{right}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# The ranges most fields use (named so a config reads as a sentence).
COUNT = Range(1, None)  # sizes and counts >= 1
NONNEGATIVE = Range(0, None)  # weights, decays: >= 0
POSITIVE = Range(0, None, low_closed=False)  # rates, temperatures: > 0
FRACTION = Range(0, 1, high_closed=False)  # probabilities, smoothing: [0, 1)
UNIT_INTERVAL = Range(0, 1)  # mixing coefficients: [0, 1]


def option(default: Any = dataclasses.MISSING, help: str = "", *, range: Range | None = None,  # noqa: A002
           default_factory: Any = dataclasses.MISSING, **field_kwargs: Any) -> Any:
    """A dataclass field with ``metadata={"help": help, "range": range}``."""
    metadata = {HELP: help, **({RANGE: range} if range is not None else {})}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata, **field_kwargs)
    return dataclasses.field(default=default, metadata=metadata, **field_kwargs)


def help_of(f: dataclasses.Field) -> str:
    """The field's help text ('' when it has none)."""
    return str(f.metadata.get(HELP, ""))


def range_of(f: dataclasses.Field) -> Range | None:
    """The field's declared range, or ``None``."""
    value = f.metadata.get(RANGE)
    return value if isinstance(value, Range) else None


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a config dataclass's init fields (``default_factory()`` called)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def split_fields(cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` split into (the init fields of the config dataclass ``cls``, everything else): a
    strategy's keyword arguments into its method options and ``SupervisedTemplate``'s."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}


def with_options(cls: type) -> Callable[[F], F]:
    """Decorator: ``fn``'s signature gains the init fields of the config dataclass ``cls`` as
    keyword-only parameters with the dataclass's defaults, before its ``**kwargs``.

    ``fn`` itself takes them through ``**kwargs`` (:func:`split_fields`), so the defaults keep one
    copy, the dataclass's; ``help()``, IDEs and Avalanche's check of a strategy's keyword names
    (which reads ``inspect.signature`` of every ``__init__`` in the MRO) see the options.
    """
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        taken = {p.name for p in params}
        values = defaults(cls)
        options = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=values[f.name], annotation=f.type)
                   for f in dataclasses.fields(cls) if f.init and f.name not in taken]
        var_keyword = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        rest = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = signature.replace(parameters=[*rest, *options, *var_keyword])  # type: ignore[attr-defined]
        return fn

    return decorate
