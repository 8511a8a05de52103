"""`runs share`: the W&B Report model and its offline outline from a finished suite folder.

Only W&B's public API client is faked: ``wandb.Api`` is replaced by :class:`FakeWandbApi`, which
answers the GraphQL documents wandb-workspaces sends through the client's transport
(``Api._service_api.execute_graphql``: project internal-id look-ups and ``upsertView``) and the
client's ``default_entity`` / ``projects`` / ``create_project``. Everything above it —
wandb-workspaces, this project's report and share code — runs for real. Nothing here can reach the
network: the fake answers in-process, and the not-logged-in case fails in ``wandb.Api()`` before any
request (no credentials in a temporary HOME and W&B config folder).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import wandb
import yaml

from runs import share
from runs.__main__ import main

SUITE = "tiny"
METHODS = {"zeroshot": "zeroshot", "naive": "naive", "mozo": "mozo", "condu": "condu"}


def _record(name: str, method: str, avg: float, nonce: str) -> dict[str, Any]:
    return {
        "run_id": f"{name}-seed0", "name": name, "method": method, "stream": "synthetic", "seed": 0,
        "protocol": "seen", "pretrained": "none", "arch": "clip-tiny",
        "metrics": {"avg": avg, "last": avg - 0.1, "forgetting": 0.1, "bwt": -0.1, "zero_shot": 0.25},
        "accuracy_per_step": [avg + 0.1, avg - 0.1], "experience_names": ["exp0", "exp1"],
        "matrix": [[0.9, 0.2], [0.6, 0.7]], "zero_shot_row": [0.3, 0.2], "wall_time_s": 1.0,
        "wandb_id": f"{SUITE}-{name}-seed0-{nonce}", "fingerprint": "f" * 16, "reference": None,
    }


def _run_folder(suite_dir: Path, record: dict[str, Any], file: str = "metrics.json", synced: bool = True) -> Path:
    folder = suite_dir / f"{record['name']}-seed0"
    (folder / "wandb" / f"offline-run-20260101_000000-{record['run_id']}").mkdir(parents=True)
    if synced:
        (folder / "wandb" / f"offline-run-20260101_000000-{record['run_id']}" / "run-x.wandb.synced").touch()
    (folder / file).write_text(json.dumps(record))
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model": {"arch": "clip-tiny", "pretrained": "none"}, "stream": {"name": "synthetic"},
        "method": {"name": record.get("method")}}))
    return folder


@pytest.fixture
def suite_dir(tmp_path: Path) -> Path:
    """A finished tiny suite: zero-shot, a baseline, MoZO, ConDU, one failed run, one superseded run."""
    root = tmp_path / "outputs" / SUITE
    for i, (name, method) in enumerate(METHODS.items()):
        _run_folder(root, _record(name, method, 0.5 + 0.05 * i, f"n{i}"))
    failed = {"status": "failed", "run_id": "lwf-seed0", "name": "lwf", "method": "lwf", "stream": "synthetic",
              "seed": 0, "reason": "non-finite loss", "experience": 1, "iteration": 2, "log": "log.txt",
              "fingerprint": "e" * 16, "wandb_id": f"{SUITE}-lwf-seed0-n9"}
    _run_folder(root, failed, "failed.json")
    _run_folder(root / ".superseded", _record("naive", "naive", 0.1, "old"))  # never in the Report
    return root


LIVE_IDS = [f"{SUITE}-condu-seed0-n3", f"{SUITE}-lwf-seed0-n9", f"{SUITE}-mozo-seed0-n2",
            f"{SUITE}-naive-seed0-n1", f"{SUITE}-zeroshot-seed0-n0"]  # folder-name order


class _FakeTransport:
    """The GraphQL transport of the fake client: records every document, answers two kinds."""

    app_url = "https://wandb.example"

    def __init__(self, server: dict[str, Any]) -> None:
        self.server = server

    def execute_graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        variables = dict(variables or {})
        self.server["calls"].append(query.split("(")[0].split()[-1])
        if "upsertView" in query:
            view_id = variables["id"] or f"view-{len(self.server['views']) + 1}"
            self.server["views"][view_id] = variables
            view = {"id": view_id, "type": variables["type"], "name": variables["name"],
                    "displayName": variables["displayName"], "description": variables["description"],
                    "project": {"name": variables["projectName"], "entityName": variables["entityName"]},
                    "spec": variables["spec"]}
            return {"upsertView": {"view": view, "inserted": variables["id"] is None}}
        if "internalId" in query:
            return {"project": {"id": "UHJvamVjdDox", "internalId": f"internal-{variables['projectName']}"}}
        raise AssertionError(f"unexpected W&B request: {query[:60]}")


class FakeWandbApi:
    """Stands in for ``wandb.Api``: same constructor, the attributes wandb-workspaces reads."""

    server: dict[str, Any] = {}

    def __init__(self, overrides: dict | None = None, timeout: int | None = None, api_key: str | None = None):
        self._service_api = _FakeTransport(self.server)

    @property
    def default_entity(self) -> str:
        return "me"

    def projects(self, entity: str) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=name) for name in sorted(self.server["projects"])]

    def create_project(self, name: str, entity: str) -> None:
        self.server["projects"].add(name)


@pytest.fixture
def fake_wandb(monkeypatch) -> dict[str, Any]:
    server: dict[str, Any] = {"views": {}, "projects": set(), "calls": []}
    monkeypatch.setattr(FakeWandbApi, "server", server)
    monkeypatch.setattr(wandb, "Api", FakeWandbApi)
    return server


def _blocks(outline: dict, kind: str) -> list[dict]:
    return [b for b in outline["blocks"] if b["type"] == kind]


def _section(outline: dict, heading: str) -> list[dict]:
    """The blocks after the H2 ``heading`` up to the next H2."""
    blocks = outline["blocks"]
    start = next(i for i, b in enumerate(blocks) if b["type"] == "H2" and b["text"] == heading)
    end = next((i for i in range(start + 1, len(blocks)) if blocks[i]["type"] == "H2"), len(blocks))
    return blocks[start + 1 : end]


def test_dry_run_outline_has_every_block_and_exactly_the_live_runs(suite_dir: Path, capsys) -> None:
    assert main(["share", str(suite_dir), "--dry-run", "--entity", "team"]) == 0
    assert "publish it with: python -m runs share" in capsys.readouterr().out
    outline = json.loads((suite_dir / "report.json").read_text())
    assert outline["title"] == "tiny: results" and outline["entity"] == "team" and outline["project"] == "clip-cl"
    assert outline["run_ids"] == LIVE_IDS  # the superseded naive run is not there
    assert "not paper results" in outline["description"]

    (results,) = _section(outline, "Results")
    assert "| zeroshot | zeroshot | synthetic |" in results["text"].splitlines()[2]  # zero-shot row first
    assert "failed" in results["text"] and "Zero-shot" in results["text"]
    assert [row[0] for row in outline["table"]["rows"]] == ["zeroshot", "condu", "lwf", "mozo", "naive"]
    assert outline["table"]["rows"][2][5:] == ["failed"] * 5

    (steps,) = _section(outline, "Accuracy per step")
    assert steps["runsets"][0]["run_ids"] == LIVE_IDS
    assert steps["panels"] == [{"type": "LinePlot", "title": "Accuracy on the experiences seen so far",
                                "x": share.EXPERIENCE_KEY, "y": [share.SEEN_ACCURACY_KEY]}]
    matrices = _section(outline, "Accuracy matrices")  # one per finished run (not the failed one)
    assert [grid["runsets"][0]["run_ids"] for grid in matrices] == [[i] for i in LIVE_IDS if "lwf" not in i]
    assert all(grid["panels"] == [{"type": "WeavePanelSummaryTable", "table_name": "accuracy_matrix"}]
               for grid in matrices)
    (zo,) = _section(outline, "MoZO ZO diagnostics")
    assert zo["runsets"][0]["run_ids"] == [f"{SUITE}-mozo-seed0-n2"]
    assert [p["y"] for p in zo["panels"]] == [[key] for key in share.ZO_KEYS]
    (storage,) = _section(outline, "ConDU storage")
    assert storage["runsets"][0]["run_ids"] == [f"{SUITE}-condu-seed0-n3"]
    assert [p["y"] for p in storage["panels"]] == [[key] for key in share.CONDU_KEYS]


def test_report_model_from_the_faked_client_publishes_and_updates(suite_dir: Path, fake_wandb, capsys) -> None:
    assert main(["share", str(suite_dir), "--project", "p"]) == 0
    out = capsys.readouterr().out
    (view_id,) = fake_wandb["views"]
    assert f"report: https://wandb.example/me/p/reports/tiny:-results--{view_id}" in out
    view = fake_wandb["views"][view_id]
    assert (view["entityName"], view["projectName"], view["displayName"]) == ("me", "p", "tiny: results")
    spec = json.loads(view["spec"])
    grids = [b for b in spec["blocks"] if b["type"] == "panel-grid"]
    run_sets = [rs for grid in grids for rs in grid["metadata"]["runSets"]]
    assert all(rs["project"] == {"entityName": "me", "name": "p", "id": "internal-p"} for rs in run_sets)
    assert json.dumps(run_sets[0]["filters"]).count("tiny-") == len(LIVE_IDS)
    for run_id in LIVE_IDS:
        assert run_id in json.dumps(run_sets[0]["filters"])
    assert "seed0-old" not in json.dumps(spec)  # the superseded run's id never reaches the Report
    assert fake_wandb["projects"] == {"p"}  # created once, on the first save
    state = json.loads((suite_dir / "wandb_report.json").read_text())
    assert state["report_id"] == view_id and state["entity"] == "me" and state["project"] == "p"
    assert json.loads((suite_dir / "report.json").read_text())["report_id"] == view_id

    assert main(["share", str(suite_dir), "--project", "p"]) == 0  # a second call updates the same Report
    assert list(fake_wandb["views"]) == [view_id]
    assert fake_wandb["calls"].count("upsertView") == 2


def test_not_logged_in_writes_the_outline_and_exits_1(suite_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no request can wait
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    started = time.monotonic()
    assert main(["share", str(suite_dir)]) == 1
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "error: not logged in to W&B" in err and "wandb login" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    outline = json.loads((suite_dir / "report.json").read_text())
    assert outline["run_ids"] == LIVE_IDS and outline["entity"] == share.OFFLINE_ENTITY
    assert not (suite_dir / "wandb_report.json").exists()


def test_unsynced_offline_runs_are_found(suite_dir: Path) -> None:
    _run_folder(suite_dir, _record("ewc", "ewc", 0.5, "n7"), synced=False)
    info = share.load_suite_info(suite_dir)
    assert [p.parent.parent.name for p in share.pending_syncs(info.records)] == ["ewc-seed0"]


def test_wrong_folder_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["share", str(tmp_path / "nowhere"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nowhere'}: neither a suite YAML nor a suite output folder"]


def test_unique_tags_keep_first_order() -> None:
    assert share.unique_tags(["condu", "mtil"], ["condu", "synthetic"], ["suite"]) == [
        "condu", "mtil", "synthetic", "suite"]


def test_suite_run_logs_table_and_keeps_its_id(suite_dir: Path) -> None:
    from runs.report import load_run_records, write_results

    records = load_run_records(suite_dir)
    write_results(records, suite_dir)
    cfg = {"project": "clip-cl", "tags": ["tiny", "suite", "tiny"]}
    run_id = share.log_suite_run(suite_dir, records, cfg, "offline")
    nonce = json.loads((suite_dir / "suite_run.json").read_text())["nonce"]
    assert run_id == f"{SUITE}-suite-{nonce}" and len(nonce) == 8
    assert share.log_suite_run(suite_dir, records, cfg, "offline") == run_id  # the same run, resumed
    run_dirs = sorted((suite_dir / "wandb").glob("offline-run-*"))
    # one id, two sessions (W&B adds "-1" to a folder name when two sessions start within one second)
    assert len(run_dirs) == 2 and all(re.search(rf"-{run_id}(-\d+)?$", d.name) for d in run_dirs)
    tables = list(run_dirs[0].glob("files/media/table/suite/results*.table.json"))
    assert tables, "the suite table was not logged"
    table = json.loads(tables[0].read_text())
    assert table["columns"][:5] == ["Run", "Method", "Stream", "Model", "Seeds"]
    assert [row[0] for row in table["data"]] == ["zeroshot", "condu", "lwf", "mozo", "naive"]
