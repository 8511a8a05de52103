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

import contextlib
import contextvars
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
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


_READ_ONLY = contextvars.ContextVar("runs_folders_read_only", default=False)


@contextlib.contextmanager
def read_only() -> Iterator[None]:
    """Inside, :func:`quarantine` only warns: ``status`` never writes (a damaged file stays where it is)."""
    token = _READ_ONLY.set(True)
    try:
        yield
    finally:
        _READ_ONLY.reset(token)


def quarantine(path: Path) -> Path:
    """Move a damaged file aside to ``<name>.corrupt-<time>`` (kept for inspection) and warn; under
    :func:`read_only`, or when the folder cannot be written, only warn."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    if _READ_ONLY.get():
        log.warning("%s is damaged (left in place; the next run moves it aside)", path)
        return path
    try:
        path.rename(target)
    except OSError as error:
        raise output_error(path, error) from None
    log.warning("%s was damaged; moved it to %s", path, target.name)
    return target


def refuse_symlink(path: Path) -> None:
    """A run folder that is a symbolic link (a results folder copied from elsewhere) is refused: the
    toolkit would write through it, out of the output folder (exit 2, nothing written)."""
    from .errors import RefusedError

    if Path(path).is_symlink():
        raise RefusedError(f"{path}: the run folder is a symbolic link (to {os.readlink(path)}); the toolkit "
                           f"never writes through one: replace it by a real folder or remove it")


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
        return meta if _valid_meta(meta) else None

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

    def state(self, fp: str, config: dict[str, Any], machine: dict[str, str] | None,
              compare: Callable[[dict[str, Any]], list[str]] | None = None) -> FolderState:
        """Compare the folder with the run about to start (``machine`` None: not compared here).

        ``compare(stored config) -> changes`` (``RunKey.differences``) judges a folder whose
        fingerprint differs: no change means it was written under an older fingerprint format and
        holds this run (:func:`runs.fingerprint.differences`).
        """
        if self.path.exists() and not self.path.is_dir():
            return FolderState("changed", [f"a file stands where the run folder belongs ({self.path})"])
        if not self.path.exists() or not any(self.path.iterdir()):
            return FolderState("new")
        meta = self.meta()
        if meta is None:
            return FolderState("changed", ["the folder has no readable fingerprint.json (written before "
                                           "fingerprints existed, or damaged)"])
        if meta["fingerprint"] != fp:
            stored = meta.get("config", {})
            changes = compare(stored) if compare is not None else changed_fields(stored, config)
            if changes or compare is None:
                return FolderState("changed", changes or [f"fingerprint {meta['fingerprint']} -> {fp}"])
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


def _valid_meta(meta: Any) -> bool:
    """``fingerprint.json`` of the shape :meth:`RunFolder.create` writes (a wrong-typed one is damaged)."""
    return (isinstance(meta, dict) and isinstance(meta.get("fingerprint"), str)
            and isinstance(meta.get("config", {}), dict) and isinstance(meta.get("machine") or {}, dict)
            and isinstance(meta.get("wandb_id") or "", str))


def wandb_id(suite: str, run_id: str, nonce: str) -> str:
    """``<suite>-<run>-seed<k>-<nonce>``: unique per folder (the nonce), stable across its resumes."""
    return f"{suite}-{run_id}"[:110] + f"-{nonce}"
