"""One worker per run folder: an exclusive lock file with host, pid, start time and a heartbeat.

The lock of ``<suite>/<run>-seed<k>/`` is ``<suite>/.locks/<run>-seed<k>.json``. It lives beside the
run folder, not inside it, because a folder's state is read from its files (an empty or absent folder
is ``new``, see :mod:`runs.folders`) and ``--rerun-*`` moves the folder to ``.superseded/`` while the
lock is held. Taking it is ``open(O_CREAT | O_EXCL)``: of two workers exactly one creates the file.

A thread refreshes the heartbeat every :data:`HEARTBEAT_S` seconds (60). A lock is **stale** when
its host is this host and its pid is dead, or when its heartbeat is older than :data:`STALE_AFTER_S`
(10 minutes: ten missed heartbeats, long enough for a stalled shared file system; a worker on
another host cannot be asked whether it is alive). A stale lock is taken over with a log line: it is
renamed aside (only one of two contenders' renames succeeds), then taken as above.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .io import atomic_write_text, ensure_dir

log = logging.getLogger(__name__)
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
LOCKS = ".locks"


@dataclass
class LockInfo:
    host: str
    pid: int
    start: float  # time.time() when taken
    heartbeat: float  # time.time() of the last refresh
    token: str  # random, tells this holder from a later one

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat
        return f"{self.host} pid {self.pid} (heartbeat {age:.0f} s ago)"


def lock_path(suite_dir: Path, run_id: str) -> Path:
    return Path(suite_dir) / LOCKS / f"{run_id}.json"


def read_lock(path: Path) -> LockInfo | None:
    """The lock at ``path``; None when absent. A torn file reads as a lock with no heartbeat (stale)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockInfo(str(data["host"]), int(data["pid"]), float(data["start"]), float(data["heartbeat"]),
                        str(data["token"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockInfo("?", -1, 0.0, 0.0, "unreadable")


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` alive on this host (a zombie counts as dead)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_reason(info: LockInfo, now: float | None = None, stale_after: float = STALE_AFTER_S,
                 name: str = "") -> str | None:
    """Why ``info`` is stale, or None while its holder may be alive.

    A heartbeat that is not a finite number, or lies more than ``stale_after`` in the future (more
    than any clock skew between hosts), can never age: it is stale, with a warning naming the lock.
    """
    now = time.time() if now is None else now
    if info.host == socket.gethostname() and not pid_alive(info.pid):
        return f"pid {info.pid} on this host ({info.host}) is dead"
    if not math.isfinite(info.heartbeat) or info.heartbeat - now > stale_after:
        what = ("not a number" if not math.isfinite(info.heartbeat)
                else f"{info.heartbeat - now:.0f} s in the future")
        log.warning("%slock of %s pid %s: its heartbeat is %s; treated as stale", f"{name}: " if name else "",
                    info.host, info.pid, what)
        return f"its heartbeat is {what} (a lock that can never age)"
    if now - info.heartbeat > stale_after:
        return f"its heartbeat is {now - info.heartbeat:.0f} s old (limit {stale_after:.0f} s)"
    return None


class RunLock:
    """``with RunLock(path) as lock:`` … or ``lock.acquire()`` (False: held by a live worker)."""

    def __init__(self, path: Path, *, heartbeat_s: float = HEARTBEAT_S, stale_after: float = STALE_AFTER_S) -> None:
        self.path = Path(path)
        self.heartbeat_s, self.stale_after = heartbeat_s, stale_after
        self.info: LockInfo | None = None
        self.holder: LockInfo | None = None  # the live holder after a failed acquire
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self) -> bool:
        """Publish a complete lock file or nothing: write a private temporary file, then ``os.link`` it
        to the lock's name (atomic, and it fails when the name exists), so no contender ever reads a
        half-written lock (which would look stale and be taken over)."""
        now = time.time()
        info = LockInfo(socket.gethostname(), os.getpid(), now, now, secrets.token_hex(8))
        tmp = self.path.with_name(f".{self.path.name}.new-{info.token}")
        atomic_write_text(tmp, json.dumps(asdict(info)))
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self.info = info
        return True

    def acquire(self) -> bool:
        """Take the lock (taking over a stale one); False when a live worker holds it."""
        ensure_dir(self.path.parent)
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                return True
            holder = read_lock(self.path)
            if holder is None:
                continue  # released meanwhile
            reason = stale_reason(holder, stale_after=self.stale_after, name=str(self.path))
            if reason is None:
                self.holder = holder
                return False
            self._take_over(holder, reason)
        self.holder = read_lock(self.path)
        return False

    def _take_over(self, holder: LockInfo, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.stale-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another contender moved it first
        if aside.is_dir():  # a folder where the lock file belongs: kept aside, never deleted
            log.warning("%s: a folder stood where its lock file belongs; moved it to %s", self.path, aside.name)
            return
        moved = read_lock(aside)
        if moved is not None and moved.token != holder.token:  # we moved a fresh lock: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        log.warning("%s: took over a stale lock of %s: %s", self.path.stem, holder.describe(), reason)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-{self.path.stem}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.refresh()

    def refresh(self) -> None:
        """Write a new heartbeat, if the lock is still ours."""
        if self.info is None:
            return
        current = read_lock(self.path)
        if current is None or current.token != self.info.token:
            log.warning("%s: the lock was taken by %s", self.path.stem, current.describe() if current else "nobody")
            return
        self.info.heartbeat = time.time()
        try:
            atomic_write_text(self.path, json.dumps(asdict(self.info)))
        except OSError as error:
            log.warning("%s: heartbeat not written: %s", self.path.stem, error)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.info is not None:
            current = read_lock(self.path)
            if current is not None and current.token == self.info.token:
                self.path.unlink(missing_ok=True)
        self.info = None

    def __enter__(self) -> RunLock:
        if not self.acquire():
            raise RuntimeError(f"{self.path.stem}: locked by {self.holder.describe() if self.holder else '?'}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_holder(suite_dir: Path, run_id: str, stale_after: float = STALE_AFTER_S) -> LockInfo | None:
    """The live holder of a run's lock, or None (no lock, or a stale one)."""
    info = read_lock(lock_path(suite_dir, run_id))
    if info is None or stale_reason(info, stale_after=stale_after, name=str(lock_path(suite_dir, run_id))) is not None:
        return None
    return info
