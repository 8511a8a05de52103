"""Share a suite: a W&B Report built from its run folders, and the suite-level W&B run.

``python -m runs share SUITE [--entity E --project P] [--dry-run]`` (SUITE: the suite YAML or its
output folder) builds a Report with ``wandb_workspaces.reports.v2``:

- title and description from the suite; the results table (mean ± std over seeds, the zero-shot
  column, notes and metric definitions), the published numbers and the cost table (when the runs
  recorded their cost, docs/metrics.md#cost), as Markdown;
- a run set listing the W&B ids (``metrics.json``'s ``wandb_id``) of the folder's **live** runs —
  an id filter, not a group filter, since two output folders of one suite share a group;
- line plots of the per-step accuracy on the experiences seen so far (and MTIL Transfer) across runs,
  each run's accuracy matrix (the ``accuracy_matrix`` table it logged), MoZO's ZO diagnostics and
  ConDU's storage when those methods ran.

``report.json`` (the outline: blocks, panels, run-set filters and ids, the table's rows) is written
beside ``results.md`` in every case. Online, the suite's offline runs are first uploaded with
``wandb sync`` (those without a ``.synced`` marker), then the Report is saved; its id, entity and
project go to ``wandb_report.json`` in the suite folder, so publishing again updates the same
Report. Exit codes: 0 published (or outline written with ``--dry-run``); 1 the outline was written
but publishing failed (not logged in, no network, sync failed); 2 bad input (``RunFolderError``).

W&B API facts this relies on (read in wandb-workspaces 0.4.13): blocks, panels and ``Runset``
construct offline only with an explicit ``entity``; serialising a ``Runset`` with entity and project
asks the W&B API for the project's internal id; ``Report.save()`` and ``.url`` need a login and the
network. The dry run therefore never serialises the Report; it walks the report model instead.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import wandb

from . import report as rep
from .config import load_suite
from .costs import cost_table_rows, format_cost_table
from .io import atomic_write_text
from .status import read_plan

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "clip-cl"  # WandbConfig's default project
OUTLINE_FILE = "report.json"
STATE_FILE = "wandb_report.json"  # {"report_id", "entity", "project", "url"}
SUITE_RUN_FILE = "suite_run.json"  # {"nonce", "wandb_id"} of the suite-level W&B run
OFFLINE_ENTITY = "<entity>"  # placeholder in the dry-run outline when no entity is known
# History keys the runner logs after each training step (x: the experience index, 1-based), and
# the x axis of Avalanche-published figures (MoZO's ZO diagnostics, ConDU's storage).
EXPERIENCE_KEY = "results/experience"
SEEN_ACCURACY_KEY = "results/acc_seen"
TRANSFER_KEY = "results/transfer"
STEP_KEY = "trainer/step"
MATRIX_KEY = "accuracy_matrix"
ZO_KEYS = ("MoZO/zo_loss", "MoZO/fo_loss", "MoZO/projected_grad", "MoZO/candidate")
CONDU_KEYS = ("ConDU/storage_shared_bytes", "ConDU/storage_task_bytes", "ConDU/storage_total_bytes")
HTTP_TIMEOUT_S = 20  # per W&B request, so a missing network fails in seconds, not minutes


class PublishError(RuntimeError):
    """Publishing failed after the outline was written (login, network, sync); exit code 1."""


@dataclass(frozen=True)
class SuiteInfo:
    """What a Report needs to know about a suite folder."""

    suite_dir: Path
    name: str
    project: str
    entity: str | None
    records: list[dict[str, Any]]
    run_order: list[str] | None = None


# ---------------------------------------------------------------------- suite folder
def load_suite_info(arg: str | Path, *, entity: str | None = None, project: str | None = None) -> SuiteInfo:
    """Records and W&B settings of a suite (YAML or output folder). Precedence for entity/project:
    the command line, then the suite YAML, then the last publication (``wandb_report.json``)."""
    suite_dir = rep.resolve_suite_dir(arg)
    records = rep.load_run_records(suite_dir)
    plan = read_plan(suite_dir) or {}  # a folder: the suite order (and references) its last `run` wrote
    name, run_order, cfg_project, cfg_entity = plan.get("suite") or suite_dir.name, plan.get("order"), None, None
    references = plan.get("references") or {}
    if Path(arg).is_file():
        suite = load_suite(arg)
        name, run_order = suite.name, [r.name for r in suite.runs]
        cfg_project, cfg_entity = suite.wandb.project, suite.wandb.entity
        references = {r.name: r.reference for r in suite.runs}
    for record in records:  # the reference the suite names now, not the folder's (it is not fingerprinted)
        if record.get("name") in references:
            record["reference"] = references[record["name"]]
    state = read_state(suite_dir)
    return SuiteInfo(suite_dir=suite_dir, name=name, records=records, run_order=run_order,
                     project=project or cfg_project or state.get("project") or DEFAULT_PROJECT,
                     entity=entity or cfg_entity or state.get("entity"))


def read_state(suite_dir: Path) -> dict[str, Any]:
    path = Path(suite_dir) / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise rep.RunFolderError(f"{path}: unreadable ({type(error).__name__}); delete it to publish a new Report"
                                 ) from None
    return state if isinstance(state, dict) else {}


def live_wandb_ids(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The W&B ids of the suite folder's live runs, in folder order, each once."""
    return list(dict.fromkeys(str(r["wandb_id"]) for r in records if r.get("wandb_id")))


def unique_tags(*groups: Iterable[str]) -> list[str]:
    """Tags in first-seen order without duplicates (``[a, b] + [b, c]`` -> ``[a, b, c]``)."""
    return list(dict.fromkeys(str(tag) for group in groups for tag in group if tag))


# ---------------------------------------------------------------------- the Report model
def _ids_of(records: Iterable[Mapping[str, Any]], methods: Sequence[str] | None = None) -> list[str]:
    return live_wandb_ids(r for r in records if methods is None or r.get("method") in methods)


def _runset(wr: Any, info: SuiteInfo, entity: str, ids: list[str], name: str) -> Any:
    from wandb_workspaces import expr  # late: wandb_workspaces costs ~1 s at import and only `share` needs it

    return wr.Runset(entity=entity, project=info.project, name=name, filters=[expr.Metric("ID").isin(ids)])


def _line(wr: Any, title: str, x: str, y: Sequence[str]) -> Any:
    return wr.LinePlot(title=title, x=x, y=list(y))


def _description(info: SuiteInfo, summaries: list[dict[str, Any]]) -> str:
    methods = ", ".join(dict.fromkeys(str(s["method"]) for s in summaries))
    streams = ", ".join(dict.fromkeys(s["stream"] for s in summaries))
    text = (f"Suite '{info.name}' ({info.suite_dir}): {len(info.records)} runs ({methods}) on {streams}; "
            "built by `python -m runs share` from the run folders.")
    if any(s["random_weights"] for s in summaries):
        text += " Random-weight runs (pretrained: none) check the pipeline only; they are not paper results."
    return text[:1000]


def build_report(info: SuiteInfo, entity: str) -> Any:
    """The ``wandb_workspaces`` Report of a suite (constructed offline; saving needs a login)."""
    import wandb_workspaces.reports.v2 as wr  # late: ~1 s at import; only `share` publishes

    summaries = rep.summarize_runs(info.records, run_order=info.run_order)
    comparisons = rep.compare_with_references(summaries)
    table = rep.format_table(info.records, run_order=info.run_order).split("\n**Published numbers**")[0]
    ids = live_wandb_ids(info.records)
    blocks: list[Any] = [wr.H2("Results"), wr.MarkdownBlock(text=table)]
    if comparisons:
        blocks += [wr.H2("Published numbers"), wr.MarkdownBlock(text=rep.format_comparisons(comparisons))]
    cost = format_cost_table(summaries)  # "" when no run recorded a cost
    if cost:
        blocks += [wr.H2("Cost"), wr.MarkdownBlock(text=cost.strip())]
    panels = [_line(wr, "Accuracy on the experiences seen so far", EXPERIENCE_KEY, [SEEN_ACCURACY_KEY])]
    if any(s["protocol"] == "task" for s in summaries):
        panels.append(_line(wr, "Transfer (MTIL)", EXPERIENCE_KEY, [TRANSFER_KEY]))
    blocks += [wr.H2("Accuracy per step"),
               wr.PanelGrid(runsets=[_runset(wr, info, entity, ids, f"{info.name} runs")], panels=panels)]
    blocks.append(wr.H2("Accuracy matrices"))
    for record in info.records:
        if rep.is_finished(record) and record.get("wandb_id"):
            blocks.append(wr.PanelGrid(
                runsets=[_runset(wr, info, entity, [str(record["wandb_id"])], str(record["run_id"]))],
                panels=[wr.WeavePanelSummaryTable(table_name=MATRIX_KEY)]))
    for methods, title, keys, x in ((("mozo",), "MoZO ZO diagnostics", ZO_KEYS, STEP_KEY),
                                    (("condu",), "ConDU storage", CONDU_KEYS, STEP_KEY)):
        method_ids = _ids_of(info.records, methods)
        if method_ids:
            blocks += [wr.H2(title), wr.PanelGrid(
                runsets=[_runset(wr, info, entity, method_ids, f"{info.name} {methods[0]} runs")],
                panels=[_line(wr, key, x, [key]) for key in keys])]
    return wr.Report(project=info.project, entity=entity, title=f"{info.name}: results"[:128],
                     description=_description(info, summaries), blocks=blocks)


# ---------------------------------------------------------------------- the outline
def _panel_outline(panel: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(panel).__name__}
    for name in ("title", "x", "y", "table_name"):
        if getattr(panel, name, None) not in (None, [], ""):
            out[name] = getattr(panel, name)
    return out


def _filter_ids(filters: str) -> list[str]:
    """The run ids of an ``Metric("ID") in [...]`` filter string."""
    match = re.search(r'Metric\("ID"\) in (\[.*?\])', filters)
    return [str(i) for i in ast.literal_eval(match.group(1))] if match else []


def _runset_outline(runset: Any) -> dict[str, Any]:
    return {"name": runset.name, "entity": runset.entity, "project": runset.project, "filters": runset.filters,
            "run_ids": _filter_ids(runset.filters)}


def _block_outline(block: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(block).__name__}
    if hasattr(block, "runsets"):
        out["runsets"] = [_runset_outline(rs) for rs in block.runsets]
        out["panels"] = [_panel_outline(p) for p in block.panels]
    elif isinstance(getattr(block, "text", None), str):
        out["text"] = block.text
    return out


def outline(report: Any, info: SuiteInfo, *, state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-able description of the Report: blocks, panels, run sets (filters and ids), table rows."""
    summaries = rep.summarize_runs(info.records, run_order=info.run_order)
    header, rows = rep.table_rows(summaries)
    state = state or {}
    return {
        "title": report.title, "description": report.description, "entity": report.entity,
        "project": report.project, "suite": info.name, "suite_dir": str(info.suite_dir),
        "run_ids": live_wandb_ids(info.records),
        "runs_without_wandb_id": [r["run_id"] for r in info.records if not r.get("wandb_id")],
        "table": {"header": header, "rows": rows, "caption": rep.table_caption(summaries)},
        "cost_table": dict(zip(("header", "rows"), cost_table_rows(summaries)[:2], strict=True)),
        "published": [{"run": c.run, "reference": c.key, "compared": c.compared, "reason": c.reason,
                       "rows": [dict(zip(("metric", "measured", "published", "difference"), row, strict=True))
                                for row in c.rows]}
                      for c in rep.compare_with_references(summaries)],
        "blocks": [_block_outline(block) for block in report.blocks],
        "report_id": state.get("report_id"), "url": state.get("url"),
    }


def write_outline(report: Any, info: SuiteInfo, state: Mapping[str, Any] | None = None) -> Path:
    data = outline(report, info, state=state)
    return atomic_write_text(info.suite_dir / OUTLINE_FILE, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------- publishing
def pending_syncs(records: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Offline W&B run folders of the live runs that ``wandb sync`` has not uploaded yet."""
    pending = []
    for record in records:
        folder = record.get("folder")
        for run_dir in sorted(Path(folder).glob("wandb/offline-run-*")) if folder else []:
            if not any(run_dir.glob("*.wandb.synced")):
                pending.append(run_dir)
    return pending


def sync_offline_runs(run_dirs: Sequence[Path], entity: str, project: str) -> None:
    """``wandb sync`` every folder; a failure raises :class:`PublishError` naming it."""
    for run_dir in run_dirs:
        command = [sys.executable, "-m", "wandb", "sync", "--entity", entity, "--project", project, str(run_dir)]
        log.info("syncing %s", run_dir)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PublishError(f"wandb sync {run_dir} failed: {tail[0]}")


def _login() -> Any:
    """``wandb.Api()`` or :class:`PublishError` with the one thing to do."""
    os.environ.setdefault("WANDB_HTTP_TIMEOUT", str(HTTP_TIMEOUT_S))
    try:
        return wandb.Api(timeout=HTTP_TIMEOUT_S)
    except wandb.errors.UsageError as error:
        raise PublishError(f"not logged in to W&B ({error}); run `wandb login`, then share again") from None


def _network_errors() -> tuple[type[BaseException], ...]:
    return (wandb.errors.Error, requests.RequestException, ConnectionError, TimeoutError, ValueError)


def publish(info: SuiteInfo, report_factory: Any = build_report) -> tuple[Any, dict[str, Any]]:
    """Sync the offline runs, save the Report (updating the one recorded in ``wandb_report.json``
    for the same entity/project) and record it; returns the report and the new state."""
    api = _login()
    try:
        entity = info.entity or api.default_entity
        if not entity:
            raise PublishError("W&B has no default entity for this login; pass --entity")
        sync_offline_runs(pending_syncs(info.records), entity, info.project)
        report = report_factory(info, entity)
        state = read_state(info.suite_dir)
        if state.get("report_id") and (state.get("entity"), state.get("project")) == (entity, info.project):
            report.id = state["report_id"]  # upsert: the same Report is updated, not duplicated
        report.save()
        new_state = {"report_id": report.id, "entity": entity, "project": info.project, "url": report.url}
    except _network_errors() as error:
        raise PublishError(f"publishing to W&B failed: {type(error).__name__}: {str(error)[:300]}") from None
    atomic_write_text(info.suite_dir / STATE_FILE, json.dumps(new_state, indent=2) + "\n")
    return report, new_state


@dataclass(frozen=True)
class ShareResult:
    exit_code: int  # 0 published / dry run; 1 publishing failed (outline written)
    outline: Path
    url: str | None
    message: str


def share(arg: str | Path, *, entity: str | None = None, project: str | None = None,
          dry_run: bool = False) -> ShareResult:
    """Build the suite's Report, write ``report.json``, and (unless ``dry_run``) publish it."""
    info = load_suite_info(arg, entity=entity, project=project)
    if not info.records:
        raise rep.RunFolderError(f"{info.suite_dir}: no run records to share")
    state = read_state(info.suite_dir)
    if not dry_run:
        try:
            report, state = publish(info)
        except PublishError as error:
            path = write_outline(build_report(info, info.entity or OFFLINE_ENTITY), info, state)
            return ShareResult(1, path, None, f"error: {error}\noutline written to {path}")
        path = write_outline(report, info, state)
        return ShareResult(0, path, state["url"], f"report: {state['url']}\noutline: {path}")
    path = write_outline(build_report(info, info.entity or OFFLINE_ENTITY), info, state)
    online = f"python -m runs share {arg}" + (f" --entity {entity}" if entity else "") + (
        f" --project {project}" if project else "")
    return ShareResult(0, path, None, f"dry run: outline written to {path}\npublish it with: {online}")


def main(args: Any) -> int:
    """``python -m runs share``: print the outcome, return the exit code."""
    result = share(args.suite, entity=args.entity, project=args.project, dry_run=args.dry_run)
    print(result.message, file=sys.stderr if result.exit_code else sys.stdout)
    return result.exit_code


# ---------------------------------------------------------------------- the suite-level W&B run
def suite_run_id(suite_dir: Path, suite: str) -> str:
    """``<suite>-suite-<nonce>``; the nonce is drawn once and kept in ``suite_run.json``."""
    path = Path(suite_dir) / SUITE_RUN_FILE
    if path.is_file():
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["wandb_id"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s is unreadable; drawing a new suite run id", path)
    nonce = secrets.token_hex(4)
    run_id = f"{suite}-suite-{nonce}"
    atomic_write_text(path, json.dumps({"nonce": nonce, "wandb_id": run_id}) + "\n")
    return run_id


def log_suite_run(suite_dir: Path, records: Sequence[dict[str, Any]], wandb_cfg: Mapping[str, Any],
                  mode: str, *, suite: str | None = None, run_order: Sequence[str] | None = None) -> str:
    """Log the suite table (a ``wandb.Table``), its plots (images) and the report files (an artifact)
    to the suite-level W&B run; returns its id. Call it after ``write_results``.

    ``wandb_cfg`` is the suite's ``wandb`` block as a dict (project, entity, group, tags).
    """
    suite_dir = Path(suite_dir)
    suite = suite or suite_dir.name
    run_id = suite_run_id(suite_dir, suite)
    summaries = rep.summarize_runs(records, run_order=run_order)
    header, rows = rep.table_rows(summaries)
    run = wandb.init(project=wandb_cfg.get("project") or DEFAULT_PROJECT, entity=wandb_cfg.get("entity"),
                     group=wandb_cfg.get("group") or suite, name=f"{suite}-suite", id=run_id, resume="allow",
                     job_type="suite", tags=unique_tags(wandb_cfg.get("tags") or [], ["suite"]),
                     mode=mode,  # type: ignore[arg-type]  # one of online | offline | disabled (checked)
                     dir=str(suite_dir), config={"suite": suite, "run_ids": live_wandb_ids(records)})
    try:
        row: dict[str, Any] = {"suite/results": wandb.Table(columns=list[str | int](header), data=rows)}
        for png in sorted(suite_dir.glob("*.png")):
            row[f"suite/{png.stem}"] = wandb.Image(str(png))
        run.log(row)
        artifact = wandb.Artifact(f"{run_id}-results", type="results")
        for name in ("results.md", "results.csv", "runs.csv", "references.csv", *[p.name for p in
                                                                                  suite_dir.glob("*.png")]):
            if (suite_dir / name).is_file():
                artifact.add_file(str(suite_dir / name), name=name)
        run.log_artifact(artifact)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    return run_id


__all__ = ["PublishError", "ShareResult", "SuiteInfo", "build_report", "live_wandb_ids", "load_suite_info",
           "log_suite_run", "outline", "pending_syncs", "publish", "share", "suite_run_id", "unique_tags"]
