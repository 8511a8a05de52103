"""Published numbers as data: the papers' tables, each row with its source and what makes a run comparable.

One YAML file per source paper in this folder (``mozo.yaml``, ``condu.yaml``, ``zscl.yaml``,
``moe_adapters.yaml``, ``continual_clip.yaml``). A row is addressed as ``<paper>/<setting>/<row>``
(``mozo/cifar100-10/mozo``; ``<paper>`` is the file name with ``_`` written ``-``), which is what a
run names in its ``reference:`` field. Each row carries

- its **source**: ``paper``, ``table`` and ``mark`` — ``paper`` (read in the paper),
  ``third-party summary`` (a summary of the paper, not checked against it) or ``authors' code``
  (the authors' released code / result files);
- its **comparability keys** ``requires``: dotted paths into the run's resolved config
  (``model.arch``, ``model.pretrained``, ``stream.name``, ``stream.steps``, ``stream.class_order``,
  ``stream.initial`` / ``stream.increment``, ...) with the value the published number was obtained
  with, plus ``protocol`` (``seen``: class-incremental Avg/Last; ``task``: MTIL Transfer/Avg/Last),
  the metric definition (see ``runs.metrics``);
- ``unverified`` and ``conflicts_with`` where another source disagrees: both rows are kept, neither
  is picked.

A run is compared only when every key matches (:func:`compare`); otherwise the reason is returned
("stream.steps is 5, the reference needs 10"). Runs with random weights (``pretrained: none``)
are never compared. Published values are percentages; measured fractions are scaled by 100 and the
difference is measured − published in percentage points. Memory rows (``kind: memory``, GB) are
data for ``runs bench`` readers; they are never compared with a run's accuracy. A row's ``cost`` block
(``peak_memory_gb``, ``device_hours``, the ``machine`` — device_type, device_model, precision — and its
own ``table`` / ``mark``) is compared with the run's measured cost only on the same machine class
(``runs.costs.compare_cost``, docs/metrics.md#cost).
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
MARKS = ("paper", "third-party summary", "authors' code")
PROTOCOLS = ("seen", "task")
KINDS = ("accuracy", "memory")
# value keys a row may carry, per kind (accuracy values in %, memory in GB)
VALUE_KEYS = {"accuracy": ("avg", "last", "transfer"), "memory": ("peak_memory_gb",)}
_CONFIG_ROOTS = ("model", "stream", "method", "train", "eval")
_SETTING_KEYS = {"table", "protocol", "kind", "requires", "unverified", "note", "conflicts_with", "rows", "mark"}
_COST_KEYS = {"peak_memory_gb", "device_hours", "machine", "table", "mark", "note"}
_MACHINE_KEYS = {"device_type", "device_model", "precision"}
_ROW_KEYS = {"method", "requires", "unverified", "note", "conflicts_with", "mark", "cost", *VALUE_KEYS["accuracy"],
             *VALUE_KEYS["memory"]}


class ReferenceTableError(ValueError):
    """A reference file is invalid, or a run names an unknown reference; the message says which."""


@dataclass(frozen=True)
class Reference:
    """One published row: values, source and comparability keys."""

    key: str  # <paper>/<setting>/<row>
    method: str  # the row's label in the source table
    values: dict[str, float]  # metric -> published value (% for accuracy, GB for memory)
    paper: str  # the source paper
    table: str  # which table of it
    mark: str  # paper | third-party summary | authors' code
    kind: str = "accuracy"  # accuracy | memory
    protocol: str | None = None  # seen | task (accuracy rows): the metric definition
    requires: dict[str, Any] = field(default_factory=dict)  # dotted config path -> value
    unverified: bool = False  # another source disagrees, or the row's reading is uncertain
    cost: dict[str, Any] | None = None  # published cost: peak_memory_gb, device_hours, machine, table, mark, note
    conflicts_with: tuple[str, ...] = ()  # keys of rows that contradict this one
    note: str = ""

    @property
    def source(self) -> str:
        """'<paper>, <table> [<mark>]' (plus ', unverified')."""
        return f"{self.paper}, {self.table} [{self.mark}{', unverified' if self.unverified else ''}]"


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing a run group with its reference."""

    run: str  # run name
    key: str  # the reference key the run names
    reference: Reference | None  # None for an unknown key
    reason: str = ""  # why it was not compared ("" when compared)
    rows: tuple[tuple[str, float, float, float], ...] = ()  # (metric, measured %, published %, measured - published)

    @property
    def compared(self) -> bool:
        return not self.reason


# ---------------------------------------------------------------------- loading and validation
def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ReferenceTableError(f"{where}: unknown key '{unknown[0]}'; allowed keys: {', '.join(sorted(allowed))}")


def _check_requires(requires: Any, where: str) -> dict[str, Any]:
    if not isinstance(requires, dict):
        raise ReferenceTableError(f"{where}.requires must be a mapping of dotted config paths to values")
    for path, value in requires.items():
        if not isinstance(path, str) or path.split(".")[0] not in _CONFIG_ROOTS or "." not in path:
            raise ReferenceTableError(f"{where}.requires: '{path}' is not a dotted config path under "
                                 f"{', '.join(_CONFIG_ROOTS)}")
        if isinstance(value, (dict, list)):
            raise ReferenceTableError(f"{where}.requires.{path}: expected a scalar, got {type(value).__name__}")
    return dict(requires)


def _check_cost(cost: Any, where: str, table: str, mark: str) -> dict[str, Any] | None:
    """A row's ``cost`` block (docs/metrics.md#cost): figures, the machine they were measured on, source."""
    if cost is None:
        return None
    if not isinstance(cost, dict):
        raise ReferenceTableError(f"{where}.cost must be a mapping with peak_memory_gb and/or device_hours")
    _check_keys(cost, _COST_KEYS, f"{where}.cost")
    figures = [k for k in ("peak_memory_gb", "device_hours") if k in cost]
    if not figures:
        raise ReferenceTableError(f"{where}.cost: give peak_memory_gb and/or device_hours")
    for name in figures:
        value = cost[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ReferenceTableError(f"{where}.cost.{name} = {value!r}: expected a number >= 0")
    machine = cost.get("machine")
    if machine is not None:
        if not isinstance(machine, dict):
            raise ReferenceTableError(f"{where}.cost.machine must be a mapping of {', '.join(sorted(_MACHINE_KEYS))}")
        _check_keys(machine, _MACHINE_KEYS, f"{where}.cost.machine")
    out = {"table": str(cost.get("table", table)), "mark": cost.get("mark", mark),
           **{k: float(cost[k]) for k in figures}}
    if out["mark"] not in MARKS:
        raise ReferenceTableError(f"{where}.cost: mark {out['mark']!r}; allowed: {', '.join(MARKS)}")
    if machine:
        out["machine"] = dict(machine)
    if "note" in cost:
        out["note"] = str(cost["note"])
    return out


def _row(prefix: str, setting_name: str, setting: dict, row_name: str, row: Any, file_info: dict,
         where: str) -> Reference:
    if not isinstance(row, dict):
        raise ReferenceTableError(f"{where}: a row must be a mapping")
    _check_keys(row, _ROW_KEYS, where)
    kind = setting.get("kind", "accuracy")
    if kind not in KINDS:
        raise ReferenceTableError(f"{where}: kind {kind!r}; allowed: {', '.join(KINDS)}")
    mark = row.get("mark", setting.get("mark", file_info.get("mark")))
    if mark not in MARKS:
        raise ReferenceTableError(f"{where}: mark {mark!r}; every row needs its source mark, one of: "
                                  f"{', '.join(MARKS)}")
    if not isinstance(file_info.get("paper"), str) or not file_info["paper"]:
        raise ReferenceTableError(f"{where}: the file has no 'paper' (every row must name its source)")
    if not isinstance(setting.get("table"), str) or not setting["table"]:
        raise ReferenceTableError(f"{where}: the setting has no 'table' (every row must name its source table)")
    protocol = setting.get("protocol")
    if kind == "accuracy" and protocol not in PROTOCOLS:
        raise ReferenceTableError(f"{where}: protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    values = {k: row[k] for k in VALUE_KEYS[kind] if k in row}
    wrong = sorted(set(row) & (set(VALUE_KEYS["accuracy"]) | set(VALUE_KEYS["memory"])) - set(values))
    if wrong:
        raise ReferenceTableError(f"{where}: '{wrong[0]}' is not a {kind} value; allowed: "
                                  f"{', '.join(VALUE_KEYS[kind])}")
    if not values:
        raise ReferenceTableError(f"{where}: no values; give at least one of {', '.join(VALUE_KEYS[kind])}")
    for name, value in values.items():
        upper = 100.0 if kind == "accuracy" else math.inf
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
            raise ReferenceTableError(f"{where}.{name} = {value!r}: expected a number in [0, {upper}]")
    requires = _check_requires(setting.get("requires", {}), f"{where} (setting)")
    requires |= _check_requires(row.get("requires", {}), where)
    conflicts = row.get("conflicts_with", setting.get("conflicts_with", []))
    if not isinstance(conflicts, list):
        raise ReferenceTableError(f"{where}.conflicts_with must be a list of reference keys")
    return Reference(
        key=f"{prefix}/{setting_name}/{row_name}", method=str(row.get("method", row_name)),
        values={k: float(v) for k, v in values.items()}, paper=file_info["paper"], table=setting["table"],
        mark=mark, kind=kind, protocol=protocol, requires=requires,
        unverified=bool(row.get("unverified", setting.get("unverified", False))),
        conflicts_with=tuple(conflicts), note=" ".join(filter(None, [setting.get("note"), row.get("note")])),
        cost=_check_cost(row.get("cost"), where, setting["table"], mark),
    )


def parse_file(path: Path, data: Any) -> list[Reference]:
    """The rows of one reference file (``data`` is its parsed YAML)."""
    where = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise ReferenceTableError(f"{where}: a reference file is a mapping with 'paper', 'mark' and 'settings'")
    _check_keys(data, {"paper", "mark", "settings"}, where)
    prefix = path.stem.replace("_", "-")
    rows = []
    for setting_name, setting in data["settings"].items():
        if not isinstance(setting, dict) or not isinstance(setting.get("rows"), dict) or not setting["rows"]:
            raise ReferenceTableError(f"{where}: settings.{setting_name} needs a non-empty 'rows' mapping")
        _check_keys(setting, _SETTING_KEYS, f"{where}: settings.{setting_name}")
        for row_name, row in setting["rows"].items():
            rows.append(_row(prefix, setting_name, setting, row_name, row, data,
                             f"{where}: settings.{setting_name}.rows.{row_name}"))
    return rows


def load_references(folder: Path | None = None) -> dict[str, Reference]:
    """Every row of every ``*.yaml`` in ``folder`` (default: this package), by key; validated."""
    if folder is None:
        return dict(_shipped())
    return _load(Path(folder))


@functools.cache
def _shipped() -> dict[str, Reference]:
    return _load(HERE)


def _load(folder: Path) -> dict[str, Reference]:
    references: dict[str, Reference] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ReferenceTableError(f"{path}: not valid YAML: {error}") from None
        for ref in parse_file(path, data):
            if ref.key in references:
                raise ReferenceTableError(f"{path}: reference {ref.key} is defined twice")
            references[ref.key] = ref
    for ref in references.values():
        for other in ref.conflicts_with:
            if other not in references:
                raise ReferenceTableError(f"reference {ref.key}: conflicts_with names unknown reference {other}")
    return references


def check_key(key: str, references: Mapping[str, Reference] | None = None) -> Reference:
    """The reference ``key`` names, or :class:`ReferenceTableError` listing the closest known keys."""
    references = _shipped() if references is None else references
    if key in references:
        return references[key]
    close = difflib.get_close_matches(key, list(references), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(references))}"
    raise ReferenceTableError(f"unknown reference {key!r}{hint}")


# ---------------------------------------------------------------------- comparison
MISSING = object()


def config_value(config: Mapping[str, Any], dotted: str) -> Any:
    """``config["a"]["b"]`` for ``"a.b"``; a sentinel when a level is absent."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def _same(measured: Any, wanted: Any) -> bool:
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool) and isinstance(measured, (int, float)):
        return float(measured) == float(wanted)
    return measured == wanted or (wanted is not None and str(measured) == str(wanted))


def mismatches(config: Mapping[str, Any], protocol: str | None, ref: Reference) -> list[str]:
    """Why a run with ``config`` and ``protocol`` is not comparable with ``ref`` (empty: comparable)."""
    reasons = []
    if ref.kind != "accuracy":
        return [f"{ref.key} is a {ref.kind} row, not comparable with a run's accuracy"]
    if protocol != ref.protocol:
        reasons.append(f"metric definition: protocol is {protocol}, the reference uses {ref.protocol}")
    for path, wanted in ref.requires.items():
        value = config_value(config, path)
        if value is MISSING:
            reasons.append(f"{path} is not set, the reference needs {wanted}")
        elif not _same(value, wanted):
            reasons.append(f"{path} is {value}, the reference needs {wanted}")
    return reasons


def compare(run: str, key: str, records: Sequence[Mapping[str, Any]],
            references: Mapping[str, Reference] | None = None) -> Comparison:
    """Compare the finished seeds of one run with the reference ``key``.

    Measured = mean over finished seeds of ``record["metrics"][m]`` × 100 (a percentage), for each
    metric ``m`` the reference publishes; difference = measured − published (percentage points).
    Not compared (the reason says why): unknown key, no finished seed, random weights
    (``pretrained: none``), no resolved config, or any comparability key that differs.
    """
    references = _shipped() if references is None else references
    try:
        ref = check_key(key, references)
    except ReferenceTableError as error:
        return Comparison(run, key, None, str(error))
    finished = [r for r in records if r.get("status", "finished") == "finished"]
    if not finished:
        return Comparison(run, key, ref, "no finished seed (failed runs are never compared)")
    if any(random_weights(r) for r in finished):
        return Comparison(run, key, ref, "random weights (pretrained: none) are never compared with published numbers")
    if any(((r.get("provenance") or {}).get("data") or {}).get("status") == "subset" for r in finished):
        return Comparison(run, key, ref, "subset data (provenance data.status: subset): the run read part of the "
                                         "official data")
    configs = [c for r in finished if isinstance(c := r.get("config"), Mapping)]
    if len(configs) < len(finished):
        return Comparison(run, key, ref, "the run folder has no resolved config (config.yaml) to check comparability")
    reasons = mismatches(configs[0], finished[0].get("protocol"), ref)
    if reasons:
        return Comparison(run, key, ref, "; ".join(reasons))
    rows = []
    for metric, published in ref.values.items():
        present = [float(r["metrics"][metric]) for r in finished if r["metrics"].get(metric) is not None]
        if present:
            measured = 100 * sum(present) / len(present)
            rows.append((metric, measured, published, measured - published))
    if not rows:
        return Comparison(run, key, ref, f"the run has none of the published metrics ({', '.join(ref.values)})")
    return Comparison(run, key, ref, "", tuple(rows))


def _has_random_part(value: Any) -> bool:
    """A ``pretrained: none`` anywhere in a config: CLIP's weights or another pretrained part's (e.g.
    MoE-Adapters' DDAS AlexNet, ``method.ddas.pretrained``)."""
    if isinstance(value, Mapping):
        return any((k == "pretrained" and str(v) == "none") or _has_random_part(v) for k, v in value.items())
    return False


def random_weights(record: Mapping[str, Any]) -> bool:
    """The run used random weights for CLIP or any other pretrained part: never a paper number."""
    return str(record.get("pretrained")) == "none" or _has_random_part(record.get("config"))


def format_references(references: Mapping[str, Reference] | None = None) -> str:
    """``python -m runs list references``: every reference key a run can name, grouped by source paper,
    with its published values, metric definition and source (table, mark)."""
    references = _shipped() if references is None else references
    lines = ["Published rows (a run names one with `reference: KEY`; runs/references/*.yaml)", ""]
    paper = None
    width = max((len(key) for key in references), default=0)
    for key, ref in references.items():
        if ref.paper != paper:
            paper = ref.paper
            lines += ([""] if len(lines) > 2 else []) + [paper]
        values = "  ".join(f"{name} {value:g}" for name, value in ref.values.items())
        kind = f"protocol {ref.protocol}" if ref.kind == "accuracy" else ref.kind
        lines.append(f"  {key:<{width}}  {values}  ({kind}; {ref.table} [{ref.mark}"
                     f"{', unverified' if ref.unverified else ''}])")
    return "\n".join(lines)


__all__ = ["MARKS", "MISSING", "Comparison", "Reference", "ReferenceTableError", "check_key", "compare", "config_value",
           "format_references", "load_references", "mismatches", "parse_file"]
