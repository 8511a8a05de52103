"""Suite YAML -> typed, validated dataclasses (DESIGN: configuration is data).

A suite file::

    name: smoke                      # suite name (output folder, W&B group): letters, digits, _ and -
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
        name: lwf-a1                 # display name and folder (default: the method name)

Every default lives in a component's dataclass (``ModelConfig``, ``TrainConfig``, a stream's or a
method's config); a method's paper recipe (``MethodSpec.recipe``, e.g. ConDU's label smoothing and
1000 iterations) overrides ``TrainConfig`` defaults for that method. Precedence: dataclass defaults
< method recipe < ``defaults:`` < the run's entry < ``--set`` overrides from the command line.

Validation (everything :func:`load_suite` checks before any work; all failures are one
:class:`ConfigError` line naming the file, the field and the allowed values, never a long value):

- the YAML itself within budgets (:mod:`runs.yamlio`: size, depth, alias expansion, duplicate keys);
- schema: unknown keys, wrong types, unknown method / stream / option values;
- ranges: each field's declared range (``option(..., range=...)`` on the component's dataclass,
  :mod:`strategies.options`), list items and dict values one by one; an int field without a range
  must be >= 0; every float finite;
- names: suite and run names are 1-64 letters, digits, ``_`` or ``-`` and not a field name, so no
  path derived from a YAML value leaves ``output_dir``; unique run names and seeds;
- cross-field facts known without data: the open_clip architecture exists (close matches listed),
  the device is one torch knows, a stream's checks (``StreamSpec.check``: its classes divide into
  its experiences) and the method's (``MethodSpec.check``, e.g. a layer selection that fits the
  model's depth). This module knows no method or stream by name.

Machine facts (the device is present, data and weights are available) are checked by
``runs.preflight`` where a run will start.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import open_clip

from benchmarks import STREAMS
from strategies.clip import ModelConfig
from strategies.clip.model import register_model_configs
from strategies.clip.precision import PRECISIONS, STORAGE_PRECISIONS, check_compatible
from strategies.clip.units import check_units_config
from strategies.options import Range, option, range_of
from strategies.registry import METHODS  # filled: importing it runs strategies/__init__ first
from strategies.training import TrainConfig

from .references import ReferenceTableError, check_key
from .yamlio import YAMLBudgetError, load_bytes, loads, short


class ConfigError(ValueError):
    """A suite file is invalid; the message names the file, the field and what is allowed."""


@dataclass
class EvalConfig:
    zero_shot_row: bool = option(True, "evaluate every test experience before training (row 0 of the matrix)")
    task_aware: bool = option(False, "score each test experience over its own classes only (MTIL always does)")


@dataclass
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = option("offline", "W&B mode; --online switches to online")
    project: str = option("clip-cl", "W&B project")
    entity: str | None = option(None, "W&B entity (team or user); None = the account's default")
    group: str | None = option(None, "W&B group; None = the suite name")
    tags: list[str] = option(default_factory=list, help="W&B tags added to every run")


def slurm_minutes(text: str) -> int:
    """``[D-]HH:MM:SS``, ``HH:MM`` or minutes -> minutes (rounded up), as sbatch's ``--time`` reads them."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?", str(text).strip())
    if not match:
        raise ValueError(f"time={text!r}: expected [D-]HH:MM:SS, HH:MM or minutes, e.g. 08:00:00")
    days, first, second, third = match.groups()
    if second is None:  # plain minutes
        minutes, seconds = int(first), 0
    elif third is None:  # HH:MM
        minutes, seconds = int(first) * 60 + int(second), 0
    else:
        minutes, seconds = int(first) * 60 + int(second), int(third)
    total = int(days or 0) * 1440 + minutes + (1 if seconds else 0)
    if total < 1:
        raise ValueError(f"time={text!r}: must be at least one minute")
    return total


@dataclass
class LauncherConfig:
    """Slurm options of ``--executor slurm`` (the CLI's --partition etc. override them)."""

    partition: str | None = option(None, "sbatch --partition")
    time: str = option("04:00:00", "wall time per task ([D-]HH:MM:SS); on time-out the task requeues and resumes")
    gpus_per_run: int | None = option(None, "GPUs per task; None = 1 when the run's device is not cpu, else 0")
    cpus_per_run: int = option(4, "sbatch --cpus-per-task (also torch threads in the task)")
    mem: str | None = option(None, "sbatch --mem, e.g. 32G")
    account: str | None = option(None, "sbatch --account")
    max_parallel: int | None = option(None, "array tasks running at once (--array=0-N%max_parallel); None = all")
    max_requeues: int = option(3, "preemptions / time-outs a task may requeue after")
    sbatch: dict[str, str] = option(default_factory=dict,
        help="extra sbatch options, e.g. {qos: high, constraint: a100}")
    setup: list[str] = option(default_factory=list, help="shell lines run before the task (e.g. module load, venv)")

    def __post_init__(self) -> None:
        slurm_minutes(self.time)
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"max_parallel={self.max_parallel}: must be >= 1")
        if self.cpus_per_run < 1:
            raise ValueError(f"cpus_per_run={self.cpus_per_run}: must be >= 1")


@dataclass
class Choice:
    """A named component with its validated options (``method:`` or ``stream:`` in YAML)."""

    name: str
    cfg: Any


@dataclass
class RunConfig:
    name: str = ""  # display name and folder name (default: the method name)
    method: Choice | None = None  # strategy and its options (YAML: a name or {name: ..., **options})
    stream: Choice | None = None  # benchmark stream and its options (same form)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per seed
    data_root: str = "data"  # folder holding every dataset (relative paths: to the working directory)
    download: bool = True  # let dataset loaders download what is missing where the source allows it
    reference: str | None = None  # published row to compare with, e.g. mozo/cifar100-10/mozo (runs/references)


@dataclass
class SuiteConfig:
    name: str  # suite name: output sub-folder and default W&B group
    runs: list[RunConfig]
    output_dir: str = "outputs"  # root of run folders and tables
    wandb: WandbConfig = field(default_factory=WandbConfig)
    file: str = ""  # the YAML file this came from
    overrides: list[str] = field(default_factory=list)  # the --set strings it was loaded with
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # --executor slurm's options

    @property
    def dir(self) -> Path:
        """``<output_dir>/<name>``: run folders, tables and plots."""
        return Path(self.output_dir) / self.name


_SUITE_KEYS = ("defaults", "launcher", "name", "output_dir", "runs", "wandb")
_RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig))
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: "$" would accept a final "\n"
RESERVED_NAMES = frozenset({*_SUITE_KEYS, *_RUN_KEYS, "suite"})  # a name must not read as a field in --set

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # fullmatch
MAX_INT = 2**32 - 1  # every int of a suite: counts, sizes, seeds (NumPy seeds are 32-bit)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # no string of a suite holds one: names, paths, devices, cells


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
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where, file)
            except ConfigError:
                pass
        allowed = " or ".join(_type_name(a) for a in typing.get_args(tp))
        raise ConfigError(f"{file}: {where} = {short(value)}: expected {allowed}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        allowed = ", ".join(str(a) for a in typing.get_args(tp))
        raise ConfigError(f"{file}: {where} = {short(value)}: allowed values: {allowed}")
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, file)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            return [_coerce(v, item, f"{where}[{i}]", file) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            key_tp, value_tp = typing.get_args(tp) or (Any, Any)
            return {_coerce(k, key_tp, f"{where} key", file): _coerce(v, value_tp, f"{where}.{k}", file)
                    for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        number = _as_float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{file}: {where} = {short(value)}: must be a finite number")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            if CONTROL.search(value):
                raise ConfigError(f"{file}: {where} = {short(value)}: control characters (newline, tab, ...) are "
                                  f"not allowed in a suite's strings")
            return value
    raise ConfigError(f"{file}: {where} = {short(value)}: expected {_type_name(tp)}, got {type(value).__name__}")


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _check_range(bounds: Range | None, value: Any, where: str, file: str) -> None:
    """Apply a field's declared range (its ``option(..., range=...)`` metadata) to one coerced value,
    lists and dict values element-wise; an int field without a range must be >= 0."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_range(bounds, item, f"{where}[{i}]", file)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_range(bounds, item, f"{where}.{key}", file)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, int) and value > MAX_INT:
        raise ConfigError(f"{file}: {where} = {short(value)}: must be <= {MAX_INT} (2^32 - 1)")
    if bounds is None:
        if isinstance(value, int) and value < 0:
            raise ConfigError(f"{file}: {where} = {value}: must be >= 0")
        return
    if not bounds.contains(value):
        raise ConfigError(f"{file}: {where} = {short(value)}: must be in {bounds}")


def from_dict(cls: type, data: Any, where: str, file: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, wrong types and out-of-range values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: {where or 'the suite'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names = list(fields)
    for key in data:
        if key not in names:
            raise ConfigError(f"{file}: unknown key {_join(where, short(key).strip(chr(39)))!r}; "
                              f"allowed keys: {', '.join(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(value, hints[key], _join(where, key), file)
        _check_range(range_of(fields[key]), kwargs[key], _join(where, key), file)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{file}: {where or 'the suite'}: {error}") from None


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _choice(data: Any, registry: dict[str, Any], where: str, file: str) -> Choice:
    """``name`` or ``{name: ..., **options}`` -> Choice with the component's validated options."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{file}: {where} must be a name or a mapping with 'name'; allowed names: "
                          f"{', '.join(sorted(registry))}")
    options = dict(data)
    name = options.pop("name")
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"{file}: {where}.name = {short(name)}: unknown; allowed names: "
                          f"{', '.join(sorted(registry))}")
    return Choice(name, from_dict(registry[name].config, options, where, file))


# ---- names and cross-field checks --------------------------------------------------------------
def check_name(name: Any, where: str, file: str) -> str:
    """Suite/run names are folder names: 1-64 of [A-Za-z0-9_-], not a field name."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{file}: {where} = {short(name)}: a name is 1-64 letters, digits, '_' or '-' "
                          f"(no '.', '/', spaces)")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{file}: {where} = {name!r}: reserved (a field name); choose another name")
    return name


@cache
def _known_archs() -> tuple[str, ...]:

    register_model_configs()
    return tuple(open_clip.list_models())


def check_run(run: RunConfig, where: str, file: str) -> None:
    """Facts about one run that are known without data, weights or a device."""
    assert run.method is not None and run.stream is not None
    archs = _known_archs()
    if run.model.arch not in archs:
        close = difflib.get_close_matches(run.model.arch, archs, n=4)
        hint = f"; close matches: {', '.join(close)}" if close else "; see open_clip.list_models()"
        raise ConfigError(f"{file}: {where}.model.arch = {short(run.model.arch)}: not an open_clip model{hint}")

    try:
        check_units_config(run.model.units)
    except ValueError as error:
        raise ConfigError(f"{file}: {where}.model.{error}") from None
    _check_precision(run, where, file)
    _check_method(run, where, file)
    if not DEVICE_PATTERN.fullmatch(run.train.device):
        raise ConfigError(f"{file}: {where}.train.device = {short(run.train.device)}: allowed: auto, cpu, "
                          f"cuda, cuda:N, mps")
    check = STREAMS[run.stream.name].check
    if check is not None:
        try:
            check(run.stream.cfg)
        except ValueError as error:
            raise ConfigError(f"{file}: {where}.stream: {error}") from None
    if run.reference is not None:

        try:
            check_key(run.reference)
        except ReferenceTableError as error:
            raise ConfigError(f"{file}: {where}.reference: {error}") from None
    if len(set(run.seeds)) != len(run.seeds):
        raise ConfigError(f"{file}: {where}.seeds = {short(run.seeds)}: seeds must be unique")
    _check_lr_table(run, where, file)


def experience_names(stream_cfg: Any) -> tuple[list[str], list[str]] | None:
    """(the stream's experience names, names a selection left out), known without data: MTIL names
    its datasets (``benchmarks.mtil.stream_datasets``), other streams ``exp0``, ``exp1``, ... (as
    :class:`benchmarks.base.CLIPBenchmark`); None when the stream does not say."""
    from benchmarks.mtil import MTILConfig, stream_datasets

    if isinstance(stream_cfg, MTILConfig):
        try:
            return stream_datasets(stream_cfg)
        except ValueError:
            return None  # reported by the stream's own check
    n = getattr(stream_cfg, "n_experiences", None)
    return ([f"exp{i}" for i in range(n)], []) if isinstance(n, int) else None


def _check_lr_table(run: RunConfig, where: str, file: str) -> None:
    """``train.lr_by_experience`` names only experiences of the stream (the check RecipePlugin makes
    when the run starts, made here before any work)."""
    table = run.train.lr_by_experience or {}
    names = experience_names(run.stream.cfg) if run.stream is not None and table else None
    if names is None:
        return
    known = [*names[0], *names[1]]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"{file}: {where}.train.lr_by_experience: unknown experiences {unknown}; "
                          f"allowed: {', '.join(known)}")


def _check_precision(run: RunConfig, where: str, file: str) -> None:
    """model.precision is the frozen backbone's storage dtype; a bf16/fp16 one needs autocast compute.

    ``train.precision: auto`` depends on the device and is checked where the run starts
    (``runs.runner.check_machine``).
    """

    storage = run.model.precision
    if storage not in STORAGE_PRECISIONS:
        raise ConfigError(f"{file}: {where}.model.precision = {short(storage)}: allowed values: "
                          f"{' | '.join(STORAGE_PRECISIONS)} (the frozen backbone's storage dtype); mixed "
                          f"precision is train.precision: auto | {' | '.join(PRECISIONS)}")
    if run.train.precision != "auto":
        try:
            check_compatible(storage, run.train.precision)
        except ValueError as error:
            raise ConfigError(f"{file}: {where}.train.precision = {short(run.train.precision)}: {error}") from None


def _check_method(run: RunConfig, where: str, file: str) -> None:
    """The method's own cross-field checks (``MethodSpec.check``), e.g. MoZO's layer selection against
    the model's depth; their ``ValueError`` names the field relative to the run."""
    assert run.method is not None
    check = METHODS[run.method.name].check
    if check is None:
        return
    try:
        check(run)
    except ValueError as error:
        raise ConfigError(f"{file}: {where}.{error}") from None


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
    if not all(keys):
        raise ConfigError(f"--set {short(dotted)}: empty field name")
    node = data
    for key in keys[:-1]:
        if isinstance(node.get(key), str) and key in ("method", "stream"):
            node[key] = {"name": node[key]}
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a mapping")
    node[keys[-1]] = value


@dataclass
class Override:
    """One ``--set`` item: ``[RUN:]key=value`` or ``suite.key=value``."""

    text: str
    key: str
    value: Any
    run: str | None = None  # only this run (``RUN:key=value``)
    suite_level: bool = False  # ``suite.name``, ``suite.output_dir``, ``suite.wandb.*``


def parse_override(item: str) -> Override:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {short(item)}: expected KEY=VALUE, e.g. train.epochs=2")
    try:
        value = loads(raw)
    except YAMLBudgetError as error:
        raise ConfigError(f"--set {short(item)}: {error}") from None
    run, colon, rest = key.partition(":")
    if colon:
        return Override(item, rest, value, run=run)
    if key.startswith("suite."):
        return Override(item, key[len("suite."):], value, suite_level=True)
    return Override(item, key, value)


def _component_has(merged: dict, key: str) -> bool:
    """Does ``method.x`` / ``stream.x`` name an option of the component this run uses?"""
    parts = key.split(".")
    if parts[0] not in ("method", "stream") or len(parts) < 2 or parts[1] == "name":
        return True
    registry = METHODS if parts[0] == "method" else STREAMS
    current = merged.get(parts[0])
    name = current if isinstance(current, str) else (current or {}).get("name")
    if not isinstance(name, str) or name not in registry:
        return True  # the run's own error (unknown component) is reported by parse_run
    return parts[1] in {f.name for f in dataclasses.fields(registry[name].config)}


def _owners(key: str) -> list[str]:
    section, option = key.split(".")[:2]
    registry = METHODS if section == "method" else STREAMS
    return sorted(n for n, spec in registry.items() if option in {f.name for f in dataclasses.fields(spec.config)})


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
    run.name = check_name(run.name or run.method.name, _join(where, "name"), file)
    if not run.seeds:
        raise ConfigError(f"{file}: {_join(where, 'seeds')} is empty; give at least one seed")
    check_run(run, where, file)
    return run


def read_suite_file(path: str | Path) -> dict:
    """The raw mapping of a suite file, within the YAML budgets; one ConfigError line otherwise."""
    file = str(path)
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{file}: is a folder; give the suite YAML file (e.g. runs/suites/smoke.yaml)")
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such suite file") from None
    except OSError as error:
        raise ConfigError(f"{file}: cannot read: {error.strerror}") from None
    try:
        raw = load_bytes(data)
    except YAMLBudgetError as error:
        raise ConfigError(f"{file}: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a suite must be a mapping with keys {', '.join(_SUITE_KEYS)}")
    unknown = [k for k in raw if k not in _SUITE_KEYS]
    if unknown:
        raise ConfigError(f"{file}: unknown key {short(unknown[0])}; allowed keys: {', '.join(_SUITE_KEYS)}")
    return raw


def _apply_suite_overrides(raw: dict, overrides: list[Override]) -> None:
    for item in overrides:
        top = item.key.split(".")[0]
        if top not in ("name", "output_dir", "wandb", "launcher"):
            raise ConfigError(f"--set {short(item.text)}: suite-level fields are suite.name, suite.output_dir, "
                              f"suite.wandb.<field>, suite.launcher.<field>")
        set_override(raw, item.key, item.value)


def load_suite(path: str | Path, overrides: list[str] | None = None, *, only: list[str] | None = None,
               output_dir: str | None = None) -> SuiteConfig:
    """Read, merge and validate a suite file.

    ``overrides``: ``--set`` strings: ``key=value`` applies to every selected run that has the field
    (``method.alpha`` only to methods with an ``alpha`` option; an error when none has it),
    ``RUN:key=value`` to one run, ``suite.key=value`` to a suite-level field. ``only``: run names
    the overrides are scoped to (unknown names are an error listing the names). ``output_dir``
    replaces the suite's ``output_dir``.
    """
    file = str(path)
    raw = read_suite_file(path)
    parsed = [parse_override(item) for item in overrides or []]
    _apply_suite_overrides(raw, [o for o in parsed if o.suite_level])
    if output_dir is not None:
        raw["output_dir"] = output_dir
    name = check_name(raw.get("name"), "name", file) if "name" in raw else None
    if name is None:
        raise ConfigError(f"{file}: 'name' (the suite name, a string) is required")
    entries = raw.get("runs")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{file}: 'runs' must be a non-empty list of runs")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{file}: 'defaults' must be a mapping")
    merged_runs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{file}: runs[{i}] must be a mapping with at least 'method'")
        merged_runs.append(deep_merge(defaults, entry))
    names = [_raw_name(m) for m in merged_runs]
    _check_selection(file, names, only, [o.run for o in parsed if o.run])
    selected = [only is None or n in only for n in names]
    run_overrides = [o for o in parsed if not o.suite_level]
    for item in run_overrides:
        targets = [i for i, n in enumerate(names) if selected[i] and (item.run is None or item.run == n)
                   and (item.run is not None or _component_has(merged_runs[i], item.key))]
        if not targets:
            raise ConfigError(f"--set {short(item.text)}: no selected run has option {item.key!r}; "
                              f"methods/streams with it: {', '.join(_owners(item.key)) or 'none'}")
        for i in targets:
            set_override(merged_runs[i], item.key, item.value)
    runs = [parse_run(m, file, f"runs[{i}]") for i, m in enumerate(merged_runs)]
    duplicates = sorted({r.name for r in runs if [x.name for x in runs].count(r.name) > 1})
    if duplicates:
        raise ConfigError(f"{file}: run names must be unique; repeated: {', '.join(duplicates)} "
                          f"(set 'name:' on the runs)")
    wandb = from_dict(WandbConfig, raw.get("wandb"), "wandb", file)
    out = _coerce(raw.get("output_dir", "outputs"), str, "output_dir", file)
    if not out.strip():
        raise ConfigError(f"{file}: output_dir is empty; give a folder (e.g. outputs)")
    launcher = from_dict(LauncherConfig, raw.get("launcher"), "launcher", file)
    return SuiteConfig(name=name, runs=runs, output_dir=out, wandb=wandb, file=file, overrides=list(overrides or []),
                       launcher=launcher)


def _raw_name(merged: dict) -> str:
    name = merged.get("name")
    if name:
        return name if isinstance(name, str) else str(name)
    method = merged.get("method")
    return method if isinstance(method, str) else str((method or {}).get("name", ""))


def _check_selection(file: str, names: list[str], only: list[str] | None, run_prefixes: list[str]) -> None:
    known = ", ".join(dict.fromkeys(names))
    for name in only or []:
        if name not in names:
            raise ConfigError(f"{file}: --only {short(name)}: no such run; runs: {known}")
    for name in run_prefixes:
        if name not in names:
            raise ConfigError(f"--set {short(name)}:...: no such run; runs: {known}")
        if only is not None and name not in only:
            raise ConfigError(f"--set {name}:...: run {name!r} is not selected by --only")


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (for config.yaml and W&B), choices as {name, ...}."""
    if isinstance(obj, Choice):
        return {"name": obj.name, **to_plain(obj.cfg)}
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
