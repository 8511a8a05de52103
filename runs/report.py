"""Suite report: tables and plots from the run folders of a suite.

A suite folder ``<output_dir>/<suite>/`` holds one folder per run × seed (``<run>-seed<k>/``) with
``metrics.json`` (finished) or ``failed.json`` (failed), and ``config.yaml`` (the resolved run).
Folders whose name starts with a dot (``.superseded/``) are never read. A finished record::

    {"run_id": "naive-seed0", "name": "naive", "method": "naive", "stream": "split_cifar100",
     "seed": 0, "protocol": "seen" | "task", "pretrained": "openai" | "none", "arch": "ViT-B-16",
     "metrics": {"avg": 0.71, "last": 0.60, "forgetting": 0.12, "bwt": -0.1, "transfer": null,
                 "zero_shot": 0.55},
     "accuracy_per_step": [0.9, 0.8, 0.7],          # after each training step
     "experience_names": [...], "matrix": [[...], ...], "zero_shot_row": [...] | null,
     "wall_time_s": 12.3, "wandb_id": "...", "reference": "mozo/cifar100-10/mozo" | null}

:func:`load_run_records` adds ``status`` ("finished" | "failed"), ``folder`` and ``config`` (the
parsed ``config.yaml``). Failed runs appear in tables as ``failed`` — never as numbers, never in
means. Accuracies are fractions in [0, 1]; tables print percentages with two decimals. Runs are
grouped by ``(name, stream)`` across seeds: mean, and sample standard deviation (n − 1) with at
least two finished seeds. Rows follow the suite's run order with zero-shot runs first. Runs naming
a ``reference`` are compared with the published number (``runs.references``). Every file is written
atomically (``runs.io``); plots use matplotlib's object API (no pyplot), rendered with Agg.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from . import costs
from . import references as refs
from .config import load_suite
from .io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

# (key in record["metrics"], column title), in table order.
METRICS: tuple[tuple[str, str], ...] = (
    ("zero_shot", "Zero-shot"),
    ("avg", "Avg"),
    ("last", "Last"),
    ("forgetting", "Forgetting"),
    ("bwt", "BWT"),
    ("transfer", "Transfer"),
)
_REQUIRED = ("run_id", "name", "stream", "metrics")
_FAILED_REQUIRED = ("run_id", "name")
ZERO_SHOT_METHODS = ("zeroshot",)
SUBSET_DATA_NOTE = (
    "Note: runs marked `(subset)` ({names}) read a subset of the official data (provenance `data`); "
    "their numbers are not comparable with published ones."
)
RANDOM_WEIGHTS_NOTE = (
    "Note: runs marked `pretrained: none` ({names}) use random-init/tiny models; "
    "their numbers check the pipeline and are not paper results."
)
METRIC_DEFINITIONS = {
    "seen": (
        "Class-incremental (accuracy over the classes seen so far): **Avg** = mean over the T steps of "
        "the accuracy on the test samples of every experience trained so far (sample-weighted); "
        "**Last** = that accuracy after the last step; **Forgetting** = mean over the first T−1 "
        "experiences of (best accuracy before the last step − accuracy after it); **BWT** = mean over "
        "them of (accuracy after the last step − accuracy right after learning it); **Zero-shot** = "
        "accuracy of the untrained model on every test experience, each scored over its own classes "
        "(row 0 of the matrix: nothing is seen yet), sample-weighted."
    ),
    "task": (
        "MTIL (each dataset scored over its own classes; ZSCL's definitions, unweighted): **Transfer** "
        "= mean over datasets 2..T of the mean accuracy of the models trained before it; **Avg** = mean "
        "of the whole T×T matrix; **Last** = mean of the last row; **Forgetting** / **BWT** as for "
        "class-incremental; **Zero-shot** = mean accuracy of the untrained model over the datasets."
    ),
}
ZERO_SHOT_FOOTNOTE = (
    "¹ Zero-shot CLIP is never trained: its Forgetting and BWT are not forgetting. Each later "
    "evaluation scores an old experience against a growing label space (every class seen so far), "
    "so its accuracy falls although the model does not change."
)
STATS_NOTE = "All numbers are percentages; ± is the sample standard deviation over seeds."


class RunFolderError(ValueError):
    """A suite or run folder cannot be read; the one-line message names the folder or file."""


# ---------------------------------------------------------------------- locating and loading
def resolve_suite_dir(arg: str | Path) -> Path:
    """The suite folder for a command-line argument: a suite YAML or its output folder.

    For a YAML the folder is ``Path(suite.output_dir) / suite.name``. A folder that does not exist,
    or holds no run folder, raises :class:`RunFolderError` (listing sub-folders that are suites).
    """
    path = Path(arg)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        suite = load_suite(path)
        path = Path(suite.output_dir) / suite.name
        if not path.is_dir():
            raise RunFolderError(f"{arg}: suite '{suite.name}' has no output folder {path} yet (run it first)")
    if not path.is_dir():
        raise RunFolderError(f"{arg}: neither a suite YAML nor a suite output folder")
    if not _run_folders(path):
        inner = sorted(p.name for p in _live_dirs(path) if _run_folders(p))
        hint = f"; its sub-folders {', '.join(inner)} are suite folders" if inner else ""
        raise RunFolderError(f"{path}: no run folders (<run>-seed<k>/ with metrics.json or failed.json){hint}")
    return path


def _live_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _run_folders(folder: Path) -> list[Path]:
    return [p for p in _live_dirs(folder) if (p / "metrics.json").is_file() or (p / "failed.json").is_file()]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path}: unreadable run record ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: a run record must be a JSON object, got {type(data).__name__}")
    return data


def _read_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        # the record holds the numbers: a damaged config is named, never fatal (docs/reliability.md)
        log.warning("%s: unreadable run config (%s); the run is reported from its record alone",
                    path, type(error).__name__)
        return None
    if config is not None and not isinstance(config, dict):
        log.warning("%s: a run config must be a mapping, got %s; the run is reported from its record alone",
                    path, type(config).__name__)
    return config if isinstance(config, dict) else None


def load_run_records(suite_dir: Path, *, damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """One record per live run folder, in folder-name order: finished ones (``metrics.json``) and
    failed ones (``failed.json``; ``metrics.json`` wins when both exist). Folders with neither and
    dot-folders are skipped; a damaged record raises :class:`RunFolderError` naming the file — or,
    given a ``damaged`` list, is appended to it as one line naming the file and left out (the other
    runs and the table are unaffected). A damaged ``config.yaml`` is a warning (``config`` None)."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise RunFolderError(f"suite folder not found: {suite_dir}")
    records = []
    for folder in _run_folders(suite_dir):
        finished = (folder / "metrics.json").is_file()
        path = folder / ("metrics.json" if finished else "failed.json")
        try:
            record = _read_json(path)
            _check_record(record, str(path), failed=not finished)
        except RunFolderError as error:
            if damaged is None:
                raise
            damaged.append(str(error))
            continue
        record["status"] = "finished" if finished else "failed"
        record["folder"] = str(folder)
        if "config" not in record:
            record["config"] = _read_config(folder)
        records.append(record)
    log.info("loaded %d run records from %s", len(records), suite_dir)
    return records


def _check_record(record: Any, where: str, failed: bool = False) -> None:
    if not isinstance(record, dict):
        raise RunFolderError(f"{where}: a run record must be a JSON object, got {type(record).__name__}")
    failed = failed or record.get("status") == "failed"
    missing = [key for key in (_FAILED_REQUIRED if failed else _REQUIRED) if key not in record]
    if missing:
        raise RunFolderError(f"{where}: run record lacks {', '.join(missing)}")
    if not failed and not isinstance(record["metrics"], dict):
        raise RunFolderError(f"{where}: 'metrics' must be an object")


def is_finished(record: Mapping[str, Any]) -> bool:
    return record.get("status", "finished") == "finished"


def reference_of(record: Mapping[str, Any]) -> str | None:
    """The run's ``reference`` key: from the record (the suite's, set by the driver), else, for a record
    without the field, from its resolved config."""
    key = record.get("reference")
    config = record.get("config")
    if "reference" not in record and isinstance(config, Mapping):
        key = config.get("reference")
    return str(key) if key else None


def is_subset_data(record: Mapping[str, Any]) -> bool:
    """The run read a subset of the official data (its provenance's ``data.status``)."""
    data = (record.get("provenance") or {}).get("data") or {}
    return isinstance(data, Mapping) and data.get("status") == "subset"


# ---------------------------------------------------------------------- grouping
def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean over the present values; sample std only when at least two are present."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    std = statistics.stdev(present) if len(present) >= 2 else None
    return statistics.fmean(present), std


def _mean_curve(curves: list[list[float]]) -> tuple[list[float], list[float] | None]:
    """Per-step mean (and std with ≥2 curves) over seeds, cut to the shortest curve."""
    curves = [c for c in curves if c]
    if not curves:
        return [], None
    length = min(len(c) for c in curves)
    if any(len(c) != length for c in curves):
        log.warning("accuracy_per_step lengths differ across seeds; using the first %d steps", length)
    stacked = np.asarray([c[:length] for c in curves], dtype=float)  # (seeds, steps)
    std = stacked.std(axis=0, ddof=1).tolist() if len(curves) >= 2 else None
    return stacked.mean(axis=0).tolist(), std


def _zero_shot_point(record: Mapping[str, Any]) -> float | None:
    """Accuracy before training on the first experience: step 0 of the per-step curve."""
    row = record.get("zero_shot_row") or []
    return None if not row or row[0] is None else float(row[0])


def _sort_key(summary: dict[str, Any], order: Sequence[str] | None, index: int) -> tuple[int, int]:
    zero_shot = 0 if summary["method"] in ZERO_SHOT_METHODS else 1
    if order is not None and summary["name"] in order:
        return zero_shot, list(order).index(summary["name"])
    return zero_shot, (len(order) if order is not None else 0) + index


def summarize_runs(records: Sequence[dict[str, Any]], *, run_order: Sequence[str] | None = None
                   ) -> list[dict[str, Any]]:
    """One summary per ``(name, stream)``: zero-shot runs first, then ``run_order`` (the suite's
    order of run names), then first appearance.

    Each has ``name, method, stream, protocol, pretrained, arch, reference, seeds`` (finished),
    ``n_seeds``, ``failed_seeds``, ``n_failed``, ``random_weights``, ``wall_time_s`` (mean),
    ``<metric>_mean`` / ``<metric>_std`` over finished seeds, ``accuracy_per_step_mean``/``_std``,
    ``zero_shot_point`` (mean accuracy on the first experience before training) and ``records``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        _check_record(record, f"run {record.get('run_id', '?')}" if isinstance(record, dict) else "run")
        groups.setdefault((record["name"], str(record.get("stream", "?"))), []).append(record)
    summaries = [_summary(name, stream, runs) for (name, stream), runs in groups.items()]
    keyed = sorted(enumerate(summaries), key=lambda item: _sort_key(item[1], run_order, item[0]))
    return [summary for _, summary in keyed]


def _model_field(record: Mapping[str, Any], key: str) -> Any:
    """``record[key]``, else ``model.<key>`` of its resolved config (failed records lack it)."""
    config = record.get("config")
    if record.get(key) is None and isinstance(config, Mapping):
        value = refs.config_value(config, f"model.{key}")
        return None if value is refs.MISSING else value
    return record.get(key)


def _summary(name: str, stream: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    done = [run for run in runs if is_finished(run)]
    first = (done or runs)[0]
    summary: dict[str, Any] = {
        "name": name, "method": first.get("method", name), "stream": stream,
        "protocol": first.get("protocol"), "pretrained": _model_field(first, "pretrained"),
        "arch": _model_field(first, "arch"),
        "reference": reference_of(first), "random_weights": any(refs.random_weights(r) for r in runs),
        "subset_data": any(is_subset_data(r) for r in done),
        "seeds": [run.get("seed") for run in done], "n_seeds": len(done),
        "failed_seeds": [run.get("seed") for run in runs if not is_finished(run)],
        "wall_time_s": _mean_std([run.get("wall_time_s") for run in done])[0], "records": runs,
    }
    summary["n_failed"] = len(summary["failed_seeds"])
    summary["setting"] = setting_of(first)
    summary["rerun_changed"] = [run.get("seed") for run in runs if run.get("rerun_changed")]
    for key, _ in METRICS:
        mean, std = _mean_std([run["metrics"].get(key) for run in done])
        summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
    curve, curve_std = _mean_curve([list(run.get("accuracy_per_step") or []) for run in done])
    summary["accuracy_per_step_mean"], summary["accuracy_per_step_std"] = curve, curve_std
    summary["zero_shot_point"] = _mean_std([_zero_shot_point(run) for run in done])[0]
    summary.update(costs.summarize_cost(done))  # <key>_mean of the cost figures, cost_seeds, cost_machines
    return summary


def compare_with_references(summaries: Sequence[dict[str, Any]],
                            references: Mapping[str, refs.Reference] | None = None) -> list[refs.Comparison]:
    """A :class:`runs.references.Comparison` for every run group that names a reference."""
    return [refs.compare(s["name"], s["reference"], s["records"], references) for s in summaries if s["reference"]]


# ---------------------------------------------------------------------- Markdown
def _percent(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _present_metrics(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Metric columns with a value in at least one group."""
    return [(key, title) for key, title in METRICS if any(s[f"{key}_mean"] is not None for s in summaries)]


def _model_cell(s: dict[str, Any]) -> str:
    arch = s["arch"] or "?"
    return f"{arch}, random weights" if s["random_weights"] else f"{arch}/{s['pretrained'] or '?'}"


def _seeds_cell(s: dict[str, Any]) -> str:
    return f"{s['n_seeds']} + {s['n_failed']} failed" if s["n_failed"] else str(s["n_seeds"])


def _needs_zero_shot_footnote(s: dict[str, Any]) -> bool:
    return s["method"] in ZERO_SHOT_METHODS and s["protocol"] == "seen" and bool(s["forgetting_mean"])


# stream options that are not part of a row's setting (prompt templates; the name has its own column)
_STREAM_NOT_SETTING = ("name", "train_templates", "eval_templates")
RERUN_MARK = "†"
RERUN_NOTE = ("{mark} Re-run with `--rerun-changed` ({names}): the table holds the new config's results; the "
              "earlier folder is kept in `.superseded/` (the changed fields: the run's metrics.json, `rerun_changed`).")


def _resolved_precision(record: Mapping[str, Any]) -> str | None:
    """The precision the run computed in: its cost's machine, else ``train.precision`` (``auto``: bf16 on
    CUDA, fp32 elsewhere, from the recorded device)."""
    machine = (record.get("cost") or {}).get("machine") if isinstance(record.get("cost"), Mapping) else None
    if isinstance(machine, Mapping) and machine.get("precision"):
        return str(machine["precision"])
    config = _config_of(record)
    declared = refs.config_value(config, "train.precision")
    if declared is refs.MISSING:
        return None
    if declared != "auto":
        return str(declared)
    device = str((record.get("provenance") or {}).get("device") or "")
    if not device:  # a failed run records no provenance: its declared device, unless auto
        declared_device = refs.config_value(config, "train.device")
        device = "" if declared_device in (refs.MISSING, "auto") else str(declared_device)
    return ("bf16" if device.startswith("cuda") else "fp32") if device else None


def _config_of(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record's resolved config, or an empty mapping when it has none (or a damaged one)."""
    config = record.get("config")
    return config if isinstance(config, Mapping) else {}


def setting_of(record: Mapping[str, Any]) -> dict[str, str]:
    """What a row's numbers were measured under besides method and model: the unit kind, the stream's
    split / order / shots (its options but the prompt templates) and the precision."""
    config = _config_of(record)
    units = refs.config_value(config, "model.units.kind")
    stream = config.get("stream")
    stream = stream if isinstance(stream, Mapping) else {}
    options = ", ".join(f"{k} {_option_text(v)}" for k, v in stream.items()
                        if k not in _STREAM_NOT_SETTING and v is not None)
    precision = _resolved_precision(record)
    setting = {"units": "" if units is refs.MISSING else str(units), "stream": options, "precision": precision or ""}
    return {k: v for k, v in setting.items() if v}


def _option_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(str(v) for v in value) + "]"
    return str(value)


def _setting_text(setting: Mapping[str, str]) -> str:
    return "; ".join(f"{k} {v}" for k, v in setting.items()) or "?"


def _settings(summaries: Sequence[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """The setting parts every measured row shares, and the parts (keys) in which rows differ."""
    measured = [s for s in summaries if s["n_seeds"]] or list(summaries)  # a failed row may lack its precision
    settings = [s.get("setting") or {} for s in measured]
    keys = list(dict.fromkeys(k for x in settings for k in x))
    common = {k: settings[0][k] for k in keys if all(k in x and x[k] == settings[0][k] for x in settings)}
    return common, [k for k in keys if k not in common]


def shared_setting(summaries: Sequence[dict[str, Any]]) -> dict[str, str] | None:
    """The setting every row shares (then shown once, in the caption), or None when rows differ."""
    common, varying = _settings(summaries)
    return None if varying else common


def table_caption(summaries: Sequence[dict[str, Any]]) -> str:
    """``Setting of every row: units adapter; stream steps 10, ...; precision fp32`` — the parts every row
    shares ('' when none); the parts rows differ in are the Setting column."""
    common, _ = _settings(summaries)
    return f"Setting of every row: {_setting_text(common)}." if common else ""


def table_rows(summaries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the suite table (also used by the W&B Report outline): a Setting column with
    the parts (unit kind, stream split / order / shots, precision) rows differ in; the caption
    (:func:`table_caption`) holds the shared ones; a run re-run with ``--rerun-changed`` carries ``†``."""
    metrics = _present_metrics(summaries)
    varying = _settings(summaries)[1]
    per_row = bool(varying)
    header = ["Run", "Method", "Stream", *(["Setting"] if per_row else []), "Model", "Seeds",
              *[title for _, title in metrics]]
    rows = []
    for s in summaries:
        stream = f"{s['stream']} (subset)" if s["subset_data"] else s["stream"]
        name = f"{s['name']} {RERUN_MARK}" if s.get("rerun_changed") else s["name"]
        own = s.get("setting") or {}
        setting = [_setting_text({k: own[k] for k in varying if k in own})] if per_row else []
        cells = [name, str(s["method"]), stream, *setting, _model_cell(s), _seeds_cell(s)]
        if not s["n_seeds"]:
            cells += ["failed"] * len(metrics)
        else:
            for key, _ in metrics:
                cell = _percent(s[f"{key}_mean"], s[f"{key}_std"])
                if key in ("forgetting", "bwt") and _needs_zero_shot_footnote(s):
                    cell += " ¹"
                cells.append(cell)
        rows.append(cells)
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]], n_left: int, n_right: int | None = None) -> list[str]:
    """``n_left`` left-aligned columns, then ``n_right`` (default: the rest) right-aligned, then left."""
    n_right = len(header) - n_left if n_right is None else n_right
    align = ["---"] * n_left + ["---:"] * n_right + ["---"] * (len(header) - n_left - n_right)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def format_comparisons(comparisons: Sequence[refs.Comparison]) -> str:
    """Markdown: measured, published and difference per compared metric; why not, for the others."""
    if not comparisons:
        return ""
    header = ["Run", "Reference", "Metric", "Measured", "Published", "Difference", "Source"]
    rows, skipped = [], []
    for c in comparisons:
        if not c.compared:
            skipped.append(f"- {c.run} → `{c.key}`: not compared: {c.reason}.")
            continue
        if c.reference is None:  # compared implies a known reference
            continue
        source = c.reference.source + (f"; conflicts with {', '.join(c.reference.conflicts_with)}"
                                        if c.reference.conflicts_with else "")
        for metric, measured, published, diff in c.rows:
            rows.append([c.run, f"`{c.key}`", dict(METRICS).get(metric, metric), f"{measured:.2f}",
                         f"{published:.2f}", f"{diff:+.2f}", source])
    lines = ["", "**Published numbers** (difference = measured − published, percentage points)", ""]
    if rows:
        lines += _markdown_table(header, rows, 3, 3)
    return "\n".join(lines + ([""] if rows and skipped else []) + skipped) + "\n"


def _notes(summaries: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    if any(_needs_zero_shot_footnote(s) for s in summaries):
        notes.append(ZERO_SHOT_FOOTNOTE)
    failed = [f"{s['name']} (seeds {', '.join(map(str, s['failed_seeds']))})" for s in summaries if s["n_failed"]]
    if failed:
        notes.append(f"Failed runs, shown as `failed` and left out of every mean: {'; '.join(failed)} "
                     "(see their failed.json).")
    protocols = [p for p in METRIC_DEFINITIONS if any(s["protocol"] == p for s in summaries)]
    notes += [METRIC_DEFINITIONS[p] for p in protocols] + [STATS_NOTE]
    subset = [f"{s['name']} on {s['stream']}" for s in summaries if s["subset_data"]]
    if subset:
        notes.append(SUBSET_DATA_NOTE.format(names=", ".join(subset)))
    random_init = [f"{s['name']} on {s['stream']}" for s in summaries if s["random_weights"]]
    if random_init:
        notes.append(RANDOM_WEIGHTS_NOTE.format(names=", ".join(random_init)))
    rerun = [f"{s['name']} seed {', '.join(map(str, s['rerun_changed']))}" for s in summaries if s.get("rerun_changed")]
    if rerun:
        notes.append(RERUN_NOTE.format(mark=RERUN_MARK, names="; ".join(rerun)))
    return notes


def format_table(records: Sequence[dict[str, Any]], *, run_order: Sequence[str] | None = None,
                 references: Mapping[str, refs.Reference] | None = None) -> str:
    """Markdown suite table (mean ± std over seeds, in %), its notes and metric definitions, and
    the comparison with published numbers for runs that name a reference."""
    summaries = summarize_runs(records, run_order=run_order)
    if not summaries:
        return "_No runs._\n"
    header, rows = table_rows(summaries)
    lines = _markdown_table(header, rows, header.index("Seeds") + 1)
    caption = table_caption(summaries)
    text = (caption + "\n\n" if caption else "") + "\n".join(lines) + "\n\n" + "\n\n".join(_notes(summaries)) + "\n"
    return text + format_comparisons(compare_with_references(summaries, references))


# ---------------------------------------------------------------------- CSV
def _csv_text(columns: list[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    return buffer.getvalue()


def _group_csv(summaries: list[dict[str, Any]]) -> str:
    columns = ["name", "method", "stream", "protocol", "arch", "pretrained", "n_seeds", "seeds", "n_failed",
               "reference"]
    columns += [f"{key}_{stat}" for key, _ in METRICS for stat in ("mean", "std")] + ["wall_time_s", "subset_data"]
    columns += costs.group_columns(summaries)  # none for runs written before costs were recorded
    rows = [{**s, "seeds": " ".join(str(seed) for seed in s["seeds"])} for s in summaries]
    return _csv_text(columns, rows)


def _runs_csv(records: Sequence[dict[str, Any]]) -> str:
    columns = ["run_id", "name", "method", "stream", "protocol", "arch", "pretrained", "seed", "status"]
    columns += [key for key, _ in METRICS] + ["wall_time_s", "wandb_id", "reason"] + costs.run_columns(records)
    rows = [{**{k: r.get(k) for k in columns}, "status": r.get("status", "finished"),
             **{key: (r.get("metrics") or {}).get(key) for key, _ in METRICS}, **costs.flat_cost(r.get("cost"))}
            for r in records]
    return _csv_text(columns, rows)


def _references_csv(comparisons: Sequence[refs.Comparison]) -> str:
    columns = ["run", "reference", "compared", "reason", "metric", "measured", "published", "difference", "source"]
    rows: list[dict[str, Any]] = []
    for c in comparisons:
        source = c.reference.source if c.reference else ""
        base = {"run": c.run, "reference": c.key, "compared": c.compared, "reason": c.reason, "source": source}
        rows += [base | dict(zip(columns[4:8], row, strict=True)) for row in c.rows] or [base]
    return _csv_text(columns, rows)


# ---------------------------------------------------------------------- plots
RANDOM_MARK = "RANDOM WEIGHTS — pipeline check, not paper results"


def _mark_random(figure: Figure) -> None:
    """A visible diagonal watermark plus a red footer line (the layout keeps room for it)."""
    figure.text(0.5, 0.5, "RANDOM WEIGHTS", fontsize=28, color="red", alpha=0.18, rotation=25,
                ha="center", va="center")
    figure.supxlabel(RANDOM_MARK, fontsize=9, color="red")


def accuracy_figure(summaries: Sequence[dict[str, Any]], *, suite: str | None = None) -> Figure:
    """One subplot per stream, one line per run group: step 0 = before training (zero-shot accuracy
    on the first experience), step i = accuracy on the experiences trained so far after step i."""
    streams = list(dict.fromkeys(s["stream"] for s in summaries))
    figure = Figure(figsize=(5 * len(streams), 4.4), layout="constrained")
    axes = figure.subplots(1, len(streams), squeeze=False)[0]
    for ax, stream in zip(axes, streams, strict=True):
        for s in (s for s in summaries if s["stream"] == stream and s["accuracy_per_step_mean"]):
            mean = 100 * np.asarray(s["accuracy_per_step_mean"])  # (steps,)
            steps = np.arange(1, len(mean) + 1)
            std = None if s["accuracy_per_step_std"] is None else 100 * np.asarray(s["accuracy_per_step_std"])
            if s["zero_shot_point"] is not None:
                mean, steps = np.r_[100 * s["zero_shot_point"], mean], np.r_[0, steps]
                std = None if std is None else np.r_[0.0, std]
            (line,) = ax.plot(steps, mean, marker="o", label=f"{s['name']} (n={s['n_seeds']})")
            if std is not None:
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(title=stream, xlabel="training step (0 = before training)", ylabel="accuracy on seen experiences (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.suptitle(f"{suite or 'suite'}: accuracy per step")
    if any(s["random_weights"] for s in summaries):
        _mark_random(figure)
    return figure


def matrix_figure(record: dict[str, Any], *, suite: str | None = None) -> Figure:
    """Heatmap of ``matrix`` (row i: after step i; column j: experience j), cells annotated in %."""
    values, row_labels, col_labels = _matrix_values(record)
    n_rows, n_cols = values.shape
    figure = Figure(figsize=(1.0 + 0.6 * max(n_cols, 4), 1.4 + 0.5 * max(n_rows, 3)), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_xticks(range(n_cols), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), row_labels)
    ax.set(xlabel="evaluated on", ylabel="trained up to", title=f"{suite or 'suite'}: {record['run_id']}")
    if values.size <= 400:  # annotations stay legible up to about 20 x 20
        for (i, j), v in np.ndenumerate(values):
            text = "–" if math.isnan(v) else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    if refs.random_weights(record):
        _mark_random(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy_per_step(summaries: Sequence[dict[str, Any]], path: Path, *, suite: str | None = None) -> Path:
    return _save(accuracy_figure(summaries, suite=suite), Path(path))


def plot_matrix(record: dict[str, Any], path: Path, *, suite: str | None = None) -> Path:
    return _save(matrix_figure(record, suite=suite), Path(path))


def _matrix_labels(record: dict[str, Any], n_rows: int, n_cols: int) -> tuple[list[str], list[str]]:
    names = list(record.get("experience_names") or [])
    cols = names if len(names) == n_cols else [f"exp{j}" for j in range(n_cols)]
    rows = names if len(names) == n_rows else [f"step{i}" for i in range(n_rows)]
    return rows, cols


def _matrix_values(record: dict[str, Any]) -> tuple[np.ndarray, list[str], list[str]]:
    """Accuracy matrix in % with the zero-shot row first; None and ragged gaps become NaN."""
    matrix = [list(row) for row in record.get("matrix") or []]
    zero_shot = list(record.get("zero_shot_row") or [])
    rows = [zero_shot, *matrix] if zero_shot else matrix
    n_cols = max((len(row) for row in rows), default=0)
    values = np.full((len(rows), n_cols), np.nan)  # (rows, cols)
    for i, row in enumerate(rows):
        values[i, : len(row)] = [np.nan if v is None else 100 * float(v) for v in row]
    row_labels, col_labels = _matrix_labels(record, len(matrix), n_cols)
    return values, (["zero-shot"] if zero_shot else []) + row_labels, col_labels


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def matrix_file_name(record: Mapping[str, Any]) -> str:
    return f"matrix_{_safe_name(str(record['run_id']))}.png"


# ---------------------------------------------------------------------- everything
def write_results(records: Sequence[dict[str, Any]], out_dir: Path, *, suite: str | None = None,
                  run_order: Sequence[str] | None = None,
                  references: Mapping[str, refs.Reference] | None = None) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``runs.csv``, ``references.csv`` (when a run names a
    reference), ``accuracy_per_step.png`` and one ``matrix_<run_id>.png`` per finished run into
    ``out_dir`` (atomically); return ``{file name: path}``. ``suite`` defaults to the folder name."""
    if not records:
        raise ValueError("write_results needs at least one run record (no metrics.json found?)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suite = suite or out_dir.name
    summaries = summarize_runs(records, run_order=run_order)
    comparisons = compare_with_references(summaries, references)
    table = format_table(records, run_order=run_order, references=references)
    table += costs.format_cost_table(summaries, references)  # "" when no run recorded a cost
    paths = {
        "results.md": atomic_write_text(out_dir / "results.md", f"# Results: {suite}\n\n{table}"),
        "results.csv": atomic_write_text(out_dir / "results.csv", _group_csv(summaries)),
        "runs.csv": atomic_write_text(out_dir / "runs.csv", _runs_csv(records)),
    }
    if comparisons:
        paths["references.csv"] = atomic_write_text(out_dir / "references.csv", _references_csv(comparisons))
    if any(s["accuracy_per_step_mean"] for s in summaries):
        paths["accuracy_per_step.png"] = plot_accuracy_per_step(summaries, out_dir / "accuracy_per_step.png",
                                                                suite=suite)
    for record in records:
        if is_finished(record) and record.get("matrix"):
            name = matrix_file_name(record)
            paths[name] = plot_matrix(record, out_dir / name, suite=suite)
    log.info("wrote %d report files to %s", len(paths), out_dir)
    return paths


__all__ = [
    "METRICS",
    "METRIC_DEFINITIONS",
    "RunFolderError",
    "accuracy_figure",
    "compare_with_references",
    "format_table",
    "load_run_records",
    "matrix_figure",
    "plot_accuracy_per_step",
    "plot_matrix",
    "resolve_suite_dir",
    "setting_of",
    "summarize_runs",
    "table_caption",
    "table_rows",
    "write_results",
]
