"""Suite report: tables and plots from the ``metrics.json`` of every run folder of a suite.

A run record is the dict stored in ``<suite_dir>/<run_folder>/metrics.json``::

    {"run_id": "naive-split_cifar100-s0", "name": "naive", "method": "naive",
     "stream": "split_cifar100", "seed": 0, "protocol": "seen" | "task",
     "pretrained": "openai" | "none" | ...,          # optional; "none" = random-init/tiny model
     "metrics": {"avg": 0.71, "last": 0.60, "forgetting": 0.12, "bwt": -0.1, "transfer": null},
     "accuracy_per_step": [0.9, 0.8, 0.7],          # after each training step
     "experience_names": ["exp0", "exp1", "exp2"],
     "matrix": [[...], ...],                        # matrix[i][j]: accuracy on exp j after step i
     "zero_shot_row": [...] | null,                 # accuracy on each exp before any training
     "wall_time_s": 12.3}

Accuracies are fractions in [0, 1]; tables print them as percentages with two decimals. Runs are
grouped by ``(name, stream)`` across seeds: mean, and sample standard deviation (n - 1) when a group
has at least two seeds. CSV files keep raw fractions. Plots use matplotlib's object API (no pyplot,
no global backend change), which renders PNGs with Agg.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# (key in record["metrics"], column title), in table order.
METRICS: tuple[tuple[str, str], ...] = (
    ("avg", "Avg"),
    ("last", "Last"),
    ("forgetting", "Forgetting"),
    ("bwt", "BWT"),
    ("transfer", "Transfer"),
)
_REQUIRED = ("run_id", "name", "stream", "metrics")
RANDOM_WEIGHTS_NOTE = (
    "Note: runs marked `pretrained: none` ({names}) use random-init/tiny models; "
    "their numbers check the pipeline and are not paper results."
)


# ---------------------------------------------------------------------- loading and grouping
def load_run_records(suite_dir: Path) -> list[dict[str, Any]]:
    """Every ``<suite_dir>/*/metrics.json``, in folder-name order (folders without one are skipped)."""
    suite_dir = Path(suite_dir)
    if not suite_dir.is_dir():
        raise FileNotFoundError(f"suite folder not found: {suite_dir}")
    records = []
    for path in sorted(suite_dir.glob("*/metrics.json")):
        with path.open(encoding="utf-8") as handle:
            record = json.load(handle)
        _check_record(record, str(path))
        records.append(record)
    log.info("loaded %d run records from %s", len(records), suite_dir)
    return records


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a run record must be a JSON object, got {type(record).__name__}")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(f"{where}: run record lacks {', '.join(missing)}")
    if not isinstance(record["metrics"], dict):
        raise ValueError(f"{where}: 'metrics' must be an object")


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


def summarize_runs(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per ``(name, stream)`` in order of first appearance.

    Each has ``name, method, stream, protocol, pretrained, seeds, n_seeds, wall_time_s`` (mean),
    ``<metric>_mean`` / ``<metric>_std`` for every metric, and ``accuracy_per_step_mean``/``_std``.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        _check_record(record, f"run {record.get('run_id', '?')}" if isinstance(record, dict) else "run")
        groups.setdefault((record["name"], record["stream"]), []).append(record)
    summaries = []
    for (name, stream), runs in groups.items():
        summary: dict[str, Any] = {
            "name": name,
            "method": runs[0].get("method", name),
            "stream": stream,
            "protocol": runs[0].get("protocol"),
            "pretrained": runs[0].get("pretrained"),
            "seeds": [run.get("seed") for run in runs],
            "n_seeds": len(runs),
            "wall_time_s": _mean_std([run.get("wall_time_s") for run in runs])[0],
        }
        for key, _ in METRICS:
            mean, std = _mean_std([run["metrics"].get(key) for run in runs])
            summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
        curve, curve_std = _mean_curve([list(run.get("accuracy_per_step") or []) for run in runs])
        summary["accuracy_per_step_mean"], summary["accuracy_per_step_std"] = curve, curve_std
        summaries.append(summary)
    return summaries


# ---------------------------------------------------------------------- Markdown
def _percent(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _present_metrics(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Metric columns with a value in at least one group."""
    return [(key, title) for key, title in METRICS if any(s[f"{key}_mean"] is not None for s in summaries)]


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the run groups (mean ± std over seeds, in %), plus the random-weights note."""
    summaries = summarize_runs(records)
    if not summaries:
        return "_No runs._\n"
    metrics = _present_metrics(summaries)
    header = ["Run", "Method", "Stream", "Seeds", *[title for _, title in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(metrics)) + "|"]
    for s in summaries:
        cells = [s["name"], s["method"], s["stream"], str(s["n_seeds"])]
        cells += [_percent(s[f"{key}_mean"], s[f"{key}_std"]) for key, _ in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    random_init = list(dict.fromkeys(f"{r['name']} on {r['stream']}" for r in records
                                     if r.get("pretrained") == "none"))
    if random_init:
        text += "\n" + RANDOM_WEIGHTS_NOTE.format(names=", ".join(random_init)) + "\n"
    return text


# ---------------------------------------------------------------------- CSV
def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})


def _write_group_csv(path: Path, summaries: list[dict[str, Any]]) -> None:
    columns = ["name", "method", "stream", "protocol", "pretrained", "n_seeds", "seeds"]
    columns += [f"{key}_{stat}" for key, _ in METRICS for stat in ("mean", "std")] + ["wall_time_s"]
    rows = [{**s, "seeds": " ".join(str(seed) for seed in s["seeds"])} for s in summaries]
    _write_csv(path, columns, rows)


def _write_runs_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    columns = ["run_id", "name", "method", "stream", "protocol", "pretrained", "seed"]
    columns += [key for key, _ in METRICS] + ["wall_time_s"]
    rows = [{**{k: r.get(k) for k in columns}, **{key: r["metrics"].get(key) for key, _ in METRICS}}
            for r in records]
    _write_csv(path, columns, rows)


# ---------------------------------------------------------------------- plots
def plot_accuracy_per_step(summaries: Sequence[dict[str, Any]], path: Path) -> Path:
    """One subplot per stream, one line per run group: accuracy (%) after each training step."""
    streams = list(dict.fromkeys(s["stream"] for s in summaries))
    figure = Figure(figsize=(5 * len(streams), 4), layout="constrained")
    axes = figure.subplots(1, len(streams), squeeze=False)[0]
    for ax, stream in zip(axes, streams, strict=True):
        for s in (s for s in summaries if s["stream"] == stream and s["accuracy_per_step_mean"]):
            mean = 100 * np.asarray(s["accuracy_per_step_mean"])  # (steps,)
            steps = np.arange(1, len(mean) + 1)
            (line,) = ax.plot(steps, mean, marker="o", label=f"{s['name']} (n={s['n_seeds']})")
            if s["accuracy_per_step_std"] is not None:
                std = 100 * np.asarray(s["accuracy_per_step_std"])
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(title=stream, xlabel="training step", ylabel="accuracy (%)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.savefig(path, dpi=120)
    return path


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


def plot_matrix(record: dict[str, Any], path: Path) -> Path:
    """Heatmap of ``matrix`` (row i: after step i; column j: experience j), cells annotated in %."""
    values, row_labels, col_labels = _matrix_values(record)
    n_rows, n_cols = values.shape
    figure = Figure(figsize=(1.0 + 0.6 * max(n_cols, 4), 1.0 + 0.5 * max(n_rows, 3)), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=ax, label="accuracy (%)")
    ax.set_xticks(range(n_cols), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(n_rows), row_labels)
    ax.set(xlabel="evaluated on", ylabel="trained up to", title=str(record["run_id"]))
    if values.size <= 400:  # annotations stay legible up to about 20 x 20
        for (i, j), v in np.ndenumerate(values):
            text = "–" if math.isnan(v) else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    figure.savefig(path, dpi=120)
    return path


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# ---------------------------------------------------------------------- everything
def write_results(records: Sequence[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``runs.csv``, ``accuracy_per_step.png`` and one
    ``matrix_<run_id>.png`` per run with a matrix into ``out_dir``; return ``{file name: path}``."""
    if not records:
        raise ValueError("write_results needs at least one run record (no metrics.json found?)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = summarize_runs(records)
    paths: dict[str, Path] = {}

    paths["results.md"] = out_dir / "results.md"
    paths["results.md"].write_text("# Results\n\n" + format_table(records), encoding="utf-8")
    paths["results.csv"] = out_dir / "results.csv"
    _write_group_csv(paths["results.csv"], summaries)
    paths["runs.csv"] = out_dir / "runs.csv"
    _write_runs_csv(paths["runs.csv"], records)

    if any(s["accuracy_per_step_mean"] for s in summaries):
        paths["accuracy_per_step.png"] = plot_accuracy_per_step(summaries, out_dir / "accuracy_per_step.png")
    for record in records:
        if record.get("matrix"):
            file_name = f"matrix_{_safe_name(str(record['run_id']))}.png"
            paths[file_name] = plot_matrix(record, out_dir / file_name)
    log.info("wrote %d report files to %s", len(paths), out_dir)
    return paths


__all__ = [
    "METRICS",
    "format_table",
    "load_run_records",
    "plot_accuracy_per_step",
    "plot_matrix",
    "summarize_runs",
    "write_results",
]
