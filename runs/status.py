"""``python -m runs status SUITE``: finished / running / failed / pending / changed per (run, seed).

Read from the run folders (:mod:`runs.folders`) and their locks (:mod:`runs.lock`) only, so it works
under every executor and while they run, from any machine that sees the output folder:

==========  =====================================================================================
running     a live lock (its host, pid, heartbeat age) and the last ``exp k/n`` line of ``log.txt``
finished    ``metrics.json`` with the suite's fingerprint
failed      ``failed.json`` (its reason)
pending     no folder yet, or a folder in progress without a live lock (it resumes at the next run;
            a stale lock is named)
changed     the folder holds another config (``--rerun-changed`` moves it aside)
==========  =====================================================================================

Given the suite YAML every selected (run, seed) is listed; given its output folder, the runs of
the last ``run`` invocation (``.plan.json``, written by the driver) or else the folders present.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SuiteConfig, load_suite
from .folders import RunFolder, read_json, read_only
from .io import atomic_write_text, ensure_dir
from .lock import lock_path, read_lock, stale_reason
from .report import RunFolderError
from .runkey import RunKey, keys_of

PLAN = ".plan.json"
_EXP = re.compile(r"\bexp (\d+)/(\d+)\b")


@dataclass
class RunStatus:
    run_id: str
    state: str  # running | finished | failed | pending | changed
    detail: str = ""


def write_plan(suite: SuiteConfig, only: list[str] | None = None, *, keys: list[RunKey] | None = None,
               mode: str | None = None, pending: bool = False) -> None:
    """``<suite>/.plan.json``: the (run, seed)s and fingerprints of this invocation (for ``status DIR``),
    the suite's run order and W&B block, and whether its suite outputs are still to be written
    (``pending``: a ``--no-wait`` submission; the next ``run`` or ``report`` writes them)."""
    keys = keys if keys is not None else keys_of(suite, only)
    runs = [{"run_id": key.id, "fingerprint": key.fingerprint, **_accepts(key)} for key in keys]
    atomic_write_text(ensure_dir(suite.dir) / PLAN, json.dumps({
        "suite": suite.name, "file": suite.file, "runs": runs, "order": [r.name for r in suite.runs],
        "references": {r.name: r.reference for r in suite.runs},  # read by `report DIR`: not from the folders
        "wandb": dataclasses.asdict(suite.wandb), "mode": mode or suite.wandb.mode, "outputs_pending": pending,
    }, indent=2))


def _accepts(key: RunKey) -> dict[str, str]:
    """``{"accepts": fp}`` when the run's folder was written under an older fingerprint format and still
    holds this run (``RunKey.differences``), so that ``status DIR`` agrees with ``run``."""
    meta = RunFolder(key.folder).meta()
    if meta is None or meta["fingerprint"] == key.fingerprint or key.differences(meta.get("config", {})):
        return {}
    return {"accepts": str(meta["fingerprint"])}


def read_plan(suite_dir: Path) -> dict[str, Any] | None:
    """``.plan.json`` of a suite folder; None when absent or unreadable (status then lists the folders)."""
    try:
        plan = read_json(Path(suite_dir) / PLAN)
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def set_outputs_pending(suite_dir: Path, pending: bool) -> None:
    """Mark (or clear) the suite outputs as still to be written in ``.plan.json``."""
    plan = read_plan(suite_dir)
    if plan is not None and plan.get("outputs_pending") != pending:
        atomic_write_text(Path(suite_dir) / PLAN, json.dumps(plan | {"outputs_pending": pending}, indent=2))


def _progress(folder: Path) -> str:
    """``exp k/n`` of the last finished experience in ``log.txt`` ('' when none yet)."""
    try:
        with (folder / "log.txt").open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    found = _EXP.findall(tail)
    return f"exp {found[-1][0]}/{found[-1][1]} done" if found else ""


def run_status(suite_dir: Path, run_id: str, fp: str | None, key: RunKey | None = None,
               accepts: str | None = None) -> RunStatus:
    """The state of one run folder; ``fp`` None: the fingerprint is not compared; ``key``: compared as
    ``run`` does (a folder of an older fingerprint format that holds this run is not changed);
    ``accepts``: such an older fingerprint ``run`` accepted (``.plan.json``)."""
    folder = RunFolder(suite_dir / run_id)
    lock = read_lock(lock_path(suite_dir, run_id))
    stale = None if lock is None else stale_reason(lock, name=str(lock_path(suite_dir, run_id)))
    if lock is not None and stale is None:
        return RunStatus(run_id, "running", ", ".join(x for x in (lock.describe(), _progress(folder.path)) if x))
    meta = folder.meta()
    if accepts is not None and (meta or {}).get("fingerprint") == accepts:
        fp = accepts
    state = key.state(None) if key is not None else folder.state(
        fp if fp is not None else (meta or {}).get("fingerprint", ""), (meta or {}).get("config", {}), None)
    note = f"stale lock: {stale}" if stale else ""
    if state.status == "new":
        return RunStatus(run_id, "pending", note or "not started")
    if state.status == "resumable":
        progress = _progress(folder.path)
        return RunStatus(run_id, "pending", ", ".join(x for x in ("in progress, not running (resumes on the next run)",
                                                                   progress, note) if x))
    if state.status == "finished":
        wall = (state.record or {}).get("wall_time_s")
        return RunStatus(run_id, "finished", f"{wall:.0f} s" if isinstance(wall, int | float) else "")
    if state.status == "failed":
        return RunStatus(run_id, "failed", str((state.record or {}).get("reason", "?")))
    return RunStatus(run_id, "changed", "; ".join(state.changes)[:200])


def suite_status(target: str | Path, overrides: list[str] | None = None, only: list[str] | None = None,
                 output_dir: str | None = None) -> tuple[Path, list[RunStatus]]:
    """The suite folder and one :class:`RunStatus` per (run, seed) of a suite YAML or output folder."""
    path = Path(target)
    if path.is_file():
        suite = load_suite(path, overrides, only=only, output_dir=output_dir)
        return suite.dir, [run_status(suite.dir, key.id, key.fingerprint, key) for key in keys_of(suite, only)]
    if not path.is_dir():
        raise RunFolderError(f"{target}: neither a suite YAML nor a suite output folder")
    plan = path / PLAN
    if plan.is_file():
        try:
            entries = [(e["run_id"], e["fingerprint"], e.get("accepts")) for e in read_json(plan)["runs"]]
        except (ValueError, KeyError, TypeError) as error:
            raise RunFolderError(f"{plan}: unreadable ({error}); give the suite YAML instead") from None
    else:
        entries = [(p.name, None, None) for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")
                   and (p / "fingerprint.json").exists()]
        entries += [(p.stem, None, None) for p in sorted((path / ".locks").glob("*.json"))
                    if p.stem not in {e[0] for e in entries}]
    if not entries:
        raise RunFolderError(f"{path}: no run folders and no {PLAN}; give the suite YAML to see pending runs")
    return path, [run_status(path, run_id, fp, accepts=accepts) for run_id, fp, accepts in entries]


def format_status(suite_dir: Path, rows: list[RunStatus]) -> str:
    width = max(len(r.run_id) for r in rows)
    lines = [f"{suite_dir}  ({time.strftime('%Y-%m-%d %H:%M:%S')})"]
    lines += [f"  {r.run_id:<{width}}  {r.state:<8}  {r.detail}".rstrip() for r in rows]
    counts = {s: sum(r.state == s for r in rows) for s in ("finished", "running", "failed", "pending", "changed")}
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    with read_only():  # status never writes: a damaged file is named, not moved
        suite_dir, rows = suite_status(args.suite, args.overrides, args.only, args.output_dir)
    print(format_status(suite_dir, rows))
    return 0
