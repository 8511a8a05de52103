"""One run folder's life: new, in progress, finished, failed, changed, superseded.

``<output_dir>/<suite>/<run>-seed<k>/`` holds ``fingerprint.json`` (written when the folder is
created: fingerprint, the fingerprinted config, machine facts, the W&B id and its nonce),
``config.yaml``, ``provenance.json``, ``log.txt``, ``checkpoint.pt`` while in progress, then
``metrics.json`` (finished) or ``failed.json`` (failed). A re-run decides from these files alone:

=================  =========================================================================
state              what ``run`` does
=================  =========================================================================
``new``            no folder: run it
``resumable``      same fingerprint (and machine facts), no result yet: resume from its checkpoint
``finished``       same fingerprint, ``metrics.json``: skip
``failed``         ``failed.json``: skip and list it; ``--rerun-failed`` supersedes it and runs anew
``changed``        another fingerprint or machine facts, or a folder from before fingerprints:
                   refuse (exit 2, naming the changed fields); ``--rerun-changed`` supersedes it
=================  =========================================================================

Superseded folders move to ``<suite>/.superseded/<run>-seed<k>-<fingerprint>[-n]/``: kept, and out of
every table. A damaged ``metrics.json`` is moved to ``metrics.json.corrupt-<time>`` with a warning
and the run resumes from its checkpoint (or restarts).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fingerprint import changed_fields
from .io import atomic_write_text, ensure_dir, output_error

log = logging.getLogger(__name__)
SUPERSEDED = ".superseded"


@dataclass
class FolderState:
    status: str  # new | resumable | finished | failed | changed
    changes: list[str] = field(default_factory=list)  # for "changed": "train.lr 0.01 -> 0.05", ...
    record: dict[str, Any] | None = None  # metrics.json (finished) or failed.json (failed)


def read_json(path: Path) -> Any:
    """Parse a JSON file; ``ValueError`` naming the file when it is empty, torn or not UTF-8."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable JSON ({type(error).__name__}: {str(error)[:80]})") from None


def quarantine(path: Path) -> Path:
    """Move a damaged file aside to ``<name>.corrupt-<time>`` (kept for inspection) and warn."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    path.rename(target)
    log.warning("%s was damaged; moved it to %s", path, target.name)
    return target


class RunFolder:
    """The files of one (run, seed) and the decisions read from them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def file(self, name: str) -> Path:
        return self.path / name

    def meta(self) -> dict[str, Any] | None:
        """``fingerprint.json``, or None when absent or damaged."""
        path = self.file("fingerprint.json")
        if not path.exists():
            return None
        try:
            meta = read_json(path)
        except ValueError as error:
            log.warning("%s", error)
            return None
        return meta if isinstance(meta, dict) and "fingerprint" in meta else None

    def _result(self, name: str) -> dict[str, Any] | None:
        path = self.file(name)
        if not path.exists():
            return None
        try:
            record = read_json(path)
            if not isinstance(record, dict):
                raise ValueError(f"{path}: not a JSON object")
            return record
        except ValueError:
            quarantine(path)
            return None

    def state(self, fp: str, config: dict[str, Any], machine: dict[str, str] | None) -> FolderState:
        """Compare the folder with the run about to start (``machine`` None: not compared here)."""
        if not self.path.exists() or not any(self.path.iterdir()):
            return FolderState("new")
        meta = self.meta()
        if meta is None:
            return FolderState("changed", ["the folder has no readable fingerprint.json (written before "
                                           "fingerprints existed, or damaged)"])
        if meta["fingerprint"] != fp:
            return FolderState("changed", changed_fields(meta.get("config", {}), config) or
                               [f"fingerprint {meta['fingerprint']} -> {fp}"])
        failed = self._result("failed.json")
        if failed is not None:
            return FolderState("failed", record=failed)
        finished = self._result("metrics.json")
        if machine is not None and meta.get("machine") not in (None, machine):
            return FolderState("changed", [f"machine {line}" for line in changed_fields(meta["machine"], machine)])
        if finished is not None:
            return FolderState("finished", record=finished)
        return FolderState("resumable")

    def create(self, suite: str, run_id: str, fp: str, config: dict[str, Any], machine: dict[str, str]) -> dict:
        """Create the folder and its ``fingerprint.json`` with a fresh W&B id; return the meta."""
        ensure_dir(self.path)
        nonce = secrets.token_hex(4)
        meta = {"fingerprint": fp, "config": config, "machine": machine, "nonce": nonce,
                "wandb_id": wandb_id(suite, run_id, nonce), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(self.file("fingerprint.json"), json.dumps(meta, indent=2, default=str))
        return meta

    def supersede(self, fp: str) -> Path:
        """Move the folder to ``<suite>/.superseded/<name>-<fp>[-n]`` and return the new path."""
        base = ensure_dir(self.path.parent / SUPERSEDED)
        target = base / f"{self.path.name}-{fp}"
        n = 1
        while target.exists():
            target = base / f"{self.path.name}-{fp}-{n}"
            n += 1
        try:
            shutil.move(str(self.path), str(target))
        except OSError as error:
            raise output_error(self.path, error) from None
        log.info("%s: moved the old folder to %s", self.path.name, target)
        return target


def wandb_id(suite: str, run_id: str, nonce: str) -> str:
    """``<suite>-<run>-seed<k>-<nonce>``: unique per folder (the nonce), stable across its resumes."""
    return f"{suite}-{run_id}"[:110] + f"-{nonce}"
