"""Suite YAML -> typed, validated dataclasses (DESIGN: configuration is data).

A suite file::

    name: smoke                      # suite name (output folder, W&B group)
    output_dir: outputs              # where run folders and the suite table go
    wandb: {mode: offline, project: clip-cl, tags: [smoke]}
    defaults:                        # a partial run, deep-merged under every run
      model: {arch: clip-tiny, pretrained: none, units: {kind: adapter}}
      stream: {name: synthetic, n_experiences: 5}
      train: {epochs: 1, batch_size: 16}
      seeds: [0]
    runs:
      - method: zeroshot
      - method: {name: lwf, alpha: 1.0}
        name: lwf-a1                 # display name (default: the method name)

Every default lives in a component's dataclass (``ModelConfig``, ``TrainConfig``, a stream's or a
method's config); a method's paper recipe (``MethodSpec.recipe``, e.g. ConDU's label smoothing and
1000 iterations) overrides ``TrainConfig`` defaults for that method. Precedence: dataclass defaults
< method recipe < ``defaults:`` < the run's entry < ``--set`` overrides from the command line.
Any unknown key, wrong type or unknown method/stream raises
:class:`ConfigError` naming the file, the field and the allowed values.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from benchmarks import STREAMS
from strategies.clip import ModelConfig
from strategies.registry import METHODS
from strategies.training import TrainConfig


class ConfigError(ValueError):
    """A suite file is invalid; the message names the file, the field and what is allowed."""


@dataclass
class EvalConfig:
    zero_shot_row: bool = True  # evaluate every test experience before training (row 0 of the matrix)
    task_aware: bool = False  # score each test experience over its own classes only (MTIL always does)


@dataclass
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = "offline"  # W&B mode; --online switches to online
    project: str = "clip-cl"  # W&B project
    entity: str | None = None  # W&B entity (team or user); None = the account's default
    group: str | None = None  # W&B group; None = the suite name
    tags: list[str] = field(default_factory=list)  # W&B tags added to every run


@dataclass
class Choice:
    """A named component with its validated options (``method:`` or ``stream:`` in YAML)."""

    name: str
    cfg: Any


@dataclass
class RunConfig:
    name: str = ""  # display name in tables (default: the method name)
    method: Choice | None = None  # strategy and its options (YAML: a name or {name: ..., **options})
    stream: Choice | None = None  # benchmark stream and its options (same form)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per seed
    data_root: str = "data"  # folder holding every dataset (relative paths: to the working directory)
    download: bool = True  # let dataset loaders download what is missing where the source allows it


@dataclass
class SuiteConfig:
    name: str  # suite name: output sub-folder and default W&B group
    runs: list[RunConfig]
    output_dir: str = "outputs"  # root of run folders and tables
    wandb: WandbConfig = field(default_factory=WandbConfig)
    file: str = ""  # the YAML file this came from


_SUITE_KEYS = {"name", "output_dir", "wandb", "defaults", "runs"}


# ---- generic dataclass validation --------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str, file: str) -> Any:
    """Check ``value`` against the type hint ``tp``; return it converted (int -> float, dataclasses)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where, file)
            except ConfigError as error:
                errors.append(error)
        allowed = " or ".join(_type_name(a) for a in typing.get_args(tp))
        raise ConfigError(f"{file}: {where} = {value!r}: expected {allowed}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        allowed = ", ".join(str(a) for a in typing.get_args(tp))
        raise ConfigError(f"{file}: {where} = {value!r}: allowed values: {allowed}")
    elif dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, file)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            return [_coerce(v, item, f"{where}[{i}]", file) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{file}: {where} = {value!r}: expected {_type_name(tp)}, got {type(value).__name__}")


def from_dict(cls: type, data: Any, where: str, file: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            raise ConfigError(f"{file}: unknown key '{_join(where, key)}'; allowed keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], _join(where, k), file) for k, v in data.items()}
    return cls(**kwargs)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _choice(data: Any, registry: dict[str, Any], where: str, file: str) -> Choice:
    """``name`` or ``{name: ..., **options}`` -> Choice with the component's validated options."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{file}: {where} must be a name or a mapping with 'name'; allowed names: "
                          f"{', '.join(sorted(registry))}")
    options = dict(data)
    name = options.pop("name")
    if name not in registry:
        raise ConfigError(f"{file}: {where}.name = {name!r}: unknown; allowed names: {', '.join(sorted(registry))}")
    return Choice(name, from_dict(registry[name].config, options, where, file))


# ---- suite loading -----------------------------------------------------------------------------
def deep_merge(base: dict, override: dict) -> dict:
    """``override`` merged into a copy of ``base``; mappings merge key by key, the rest replaces.

    A ``method``/``stream`` mapping merges only when it names the same component (or none); naming
    another one replaces it, so options of one method never leak into another.
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        current = merged.get(key)
        same_component = key not in ("method", "stream") or (
            isinstance(value, dict) and isinstance(current, dict) and value.get("name") in (None, current.get("name"))
        )
        if isinstance(value, dict) and isinstance(current, dict) and same_component:
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_override(data: dict, dotted: str, value: Any) -> None:
    """Apply one ``--set a.b.c=value`` to a raw run mapping."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if isinstance(node.get(key), str) and key in ("method", "stream"):
            node[key] = {"name": node[key]}
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a mapping")
    node[keys[-1]] = value


def parse_run(raw: dict, file: str, where: str) -> RunConfig:
    """One merged run mapping -> RunConfig (method and stream options validated by their registry)."""
    for required in ("method", "stream"):
        if required not in raw:
            raise ConfigError(f"{file}: {where} has no '{required}' (give it in the run or in defaults)")
    method = _choice(raw["method"], METHODS, _join(where, "method"), file)
    rest = {k: v for k, v in raw.items() if k not in ("method", "stream")}
    if not isinstance(rest.get("train", {}), dict):
        raise ConfigError(f"{file}: {_join(where, 'train')} must be a mapping")
    rest["train"] = deep_merge(METHODS[method.name].recipe, rest.get("train") or {})
    run = from_dict(RunConfig, rest, where, file)
    run.method = method
    run.stream = _choice(raw["stream"], STREAMS, _join(where, "stream"), file)
    run.name = run.name or run.method.name
    if not run.seeds:
        raise ConfigError(f"{file}: {_join(where, 'seeds')} is empty; give at least one seed")
    return run


def load_suite(path: str | Path, overrides: list[str] | None = None) -> SuiteConfig:
    """Read, merge and validate a suite file; ``overrides`` are ``a.b=value`` strings for every run."""
    file = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such suite file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a suite must be a mapping with keys {', '.join(sorted(_SUITE_KEYS))}")
    unknown = set(raw) - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"{file}: unknown key '{sorted(unknown)[0]}'; allowed keys: {', '.join(sorted(_SUITE_KEYS))}")
    if not isinstance(raw.get("name"), str):
        raise ConfigError(f"{file}: 'name' (the suite name, a string) is required")
    entries = raw.get("runs")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{file}: 'runs' must be a non-empty list of runs")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{file}: 'defaults' must be a mapping")
    runs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{file}: runs[{i}] must be a mapping with at least 'method'")
        merged = deep_merge(defaults, entry)
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
            set_override(merged, key, yaml.safe_load(value))
        runs.append(parse_run(merged, file, f"runs[{i}]"))
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{file}: run names must be unique; repeated: {', '.join(duplicates)} "
                          f"(set 'name:' on the runs)")
    wandb = from_dict(WandbConfig, raw.get("wandb"), "wandb", file)
    output_dir = _coerce(raw.get("output_dir", "outputs"), str, "output_dir", file)
    return SuiteConfig(name=raw["name"], runs=runs, output_dir=output_dir,
                       wandb=wandb, file=file)


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (for config.yaml and W&B), choices as {name, ...}."""
    if isinstance(obj, Choice):
        return {"name": obj.name, **to_plain(obj.cfg)}
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
