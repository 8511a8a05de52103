"""runs.lock: one holder per run folder, stale locks (dead pid on this host, old heartbeat) taken over."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runs.lock import RunLock, live_holder, lock_path, read_lock, stale_reason


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    handler = _Lines()
    logger = logging.getLogger("runs.lock")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def _write(path: Path, **fields) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": 1, "start": time.time(), "heartbeat": time.time(), "token": "t0"}
    path.write_text(json.dumps(info | fields))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_holds_host_pid_and_times_and_excludes_a_second_holder(tmp_path):
    path = lock_path(tmp_path, "naive-seed0")
    assert path == tmp_path / ".locks" / "naive-seed0.json"
    first, second = RunLock(path), RunLock(path)
    assert first.acquire()
    info = read_lock(path)
    assert info is not None and info.host == socket.gethostname() and info.pid == __import__("os").getpid()
    assert abs(info.start - time.time()) < 60 and info.heartbeat >= info.start
    assert not second.acquire()
    assert second.holder is not None and second.holder.token == info.token
    assert live_holder(tmp_path, "naive-seed0") is not None
    first.release()
    assert not path.exists() and live_holder(tmp_path, "naive-seed0") is None
    assert second.acquire()
    second.release()


def test_of_many_concurrent_contenders_exactly_one_wins(tmp_path):
    path = lock_path(tmp_path, "r-seed0")
    locks = [RunLock(path) for _ in range(8)]
    results: list[bool] = []
    barrier = threading.Barrier(len(locks))

    def take(lock: RunLock) -> None:
        barrier.wait()
        results.append(lock.acquire())

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    for lock in locks:
        lock.release()


def test_dead_pid_on_this_host_is_stale_and_taken_over_with_a_log_line(tmp_path, lines):
    path = lock_path(tmp_path, "lwf-seed0")
    pid = _dead_pid()
    _write(path, pid=pid)
    info = read_lock(path)
    assert info is not None and stale_reason(info) == f"pid {pid} on this host ({socket.gethostname()}) is dead"
    lock = RunLock(path)
    assert lock.acquire()
    assert read_lock(path).token != "t0"
    assert any("took over a stale lock" in line and f"pid {pid}" in line for line in lines)
    lock.release()


def test_other_host_is_stale_only_when_its_heartbeat_is_older_than_the_limit(tmp_path):
    path = lock_path(tmp_path, "ewc-seed0")
    _write(path, host="elsewhere", pid=12345, heartbeat=time.time() - 30)
    assert not RunLock(path, stale_after=600).acquire()  # alive as far as we can tell
    _write(path, host="elsewhere", pid=12345, heartbeat=time.time() - 601)
    assert "heartbeat is 601 s old (limit 600 s)" in stale_reason(read_lock(path), stale_after=600)
    lock = RunLock(path, stale_after=600)
    assert lock.acquire()
    lock.release()


def test_live_pid_on_this_host_with_fresh_heartbeat_is_not_stale(tmp_path):
    path = lock_path(tmp_path, "x-seed0")
    _write(path, pid=__import__("os").getpid())
    assert stale_reason(read_lock(path)) is None
    assert not RunLock(path).acquire()


def test_torn_lock_file_reads_as_stale(tmp_path):
    path = lock_path(tmp_path, "x-seed0")
    path.parent.mkdir(parents=True)
    path.write_text('{"host": "a", "pi')
    assert stale_reason(read_lock(path)) is not None
    lock = RunLock(path)
    assert lock.acquire()
    lock.release()


def test_heartbeat_thread_refreshes_the_lock(tmp_path):
    lock = RunLock(lock_path(tmp_path, "x-seed0"), heartbeat_s=0.05)
    assert lock.acquire()
    first = read_lock(lock.path).heartbeat
    deadline = time.time() + 10
    while read_lock(lock.path).heartbeat == first and time.time() < deadline:
        time.sleep(0.02)
    assert read_lock(lock.path).heartbeat > first
    lock.release()
    assert not lock.path.exists()


def test_release_leaves_a_lock_taken_over_by_another_holder(tmp_path):
    path = lock_path(tmp_path, "x-seed0")
    lock = RunLock(path)
    assert lock.acquire()
    _write(path, token="someone-else", pid=__import__("os").getpid())
    lock.release()
    assert read_lock(path).token == "someone-else"


# ---- [faults] issue 21 item 4: heartbeats that can never age; busy runs are not "done" ---------------
@pytest.mark.parametrize("heartbeat", [float("nan"), "NaN", 10 * 86400.0])
def test_a_heartbeat_in_the_future_or_not_a_number_is_stale_with_a_warning_naming_the_lock(tmp_path, lines,
                                                                                           heartbeat):
    path = lock_path(tmp_path, "naive-seed0")
    value = time.time() + heartbeat if isinstance(heartbeat, float) and heartbeat == heartbeat else heartbeat
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "start": 0.0, "heartbeat": value, "token": "t"})
                    .replace('"NaN"', "NaN"))
    assert stale_reason(read_lock(path), name=str(path)) is not None
    assert live_holder(tmp_path, "naive-seed0") is None
    assert any(str(path) in line and "stale" in line for line in lines), lines
    lock = RunLock(path)
    assert lock.acquire()  # taken over
    lock.release()


def test_a_folder_where_a_lock_file_belongs_is_moved_aside_not_a_traceback(tmp_path, lines):
    path = lock_path(tmp_path, "naive-seed0")
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("x")
    lock = RunLock(path)
    assert lock.acquire()
    lock.release()
    kept = [p for p in path.parent.iterdir() if p.is_dir()]
    assert len(kept) == 1 and (kept[0] / "keep.txt").read_text() == "x"
    assert any("a folder stood where its lock file belongs" in line for line in lines)


def test_a_run_skipped_for_a_live_lock_makes_the_suite_exit_1_naming_it(tmp_path, capsys):
    from test_results import write_suite

    from runs.__main__ import main

    path = write_suite(tmp_path)
    _write(lock_path(tmp_path / "out" / "tiny", "naive-seed0"), host="elsewhere", pid=99)  # fresh heartbeat
    assert main(["run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "skipped: naive-seed0: another worker holds its lock" in out
    assert (tmp_path / "out" / "tiny" / "zeroshot-seed0" / "metrics.json").exists()
