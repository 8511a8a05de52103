"""Atomic file writes: a kill or a full disk at any moment leaves the old file or the new one.

Every file of a run folder and of a suite's table goes through these helpers: the content is
written to a temporary file *in the same folder* whose name carries the process id (two processes
never share it), flushed and ``fsync``-ed, then renamed over the target with ``os.replace`` (atomic
on POSIX within one file system). A failed write removes its temporary file and raises
:class:`OutputError` naming the path and the cause (e.g. "No space left on device").
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


class OutputError(OSError):
    """Writing into the output folder failed; the message names the path and the cause."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = code


def _describe(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    if error.errno == errno.EROFS:
        return "read-only file system"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (read-only folder?)"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file stands where a folder belongs"
    if error.errno == errno.ELOOP:
        return "it is a symbolic link; the toolkit never writes through one (it may point out of the output folder)"
    return error.strerror or str(error)


def output_error(path: Path | str, error: OSError) -> OutputError:
    """One-line error for ``path``: '<path>: cannot write: <cause>'."""
    return OutputError(error.errno, f"{path}: cannot write: {_describe(error)}")


def ensure_dir(path: Path) -> Path:
    """``mkdir -p`` that fails with one :class:`OutputError` line instead of a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(path, error) from None
    if not path.is_dir():
        raise OutputError(errno.ENOTDIR, f"{path}: cannot write: a file stands where a folder belongs")
    return path


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _open_nofollow(path: Path, flags: int) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` (``O_NOFOLLOW``: ELOOP instead)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)


def open_append(path: Path | str) -> IO[str]:
    """Open a text file for appending, line-buffered, without following a symbolic link (a log
    planted as a link to a file outside the output folder is refused with :class:`OutputError`)."""
    try:
        fd = _open_nofollow(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as error:
        raise output_error(path, error) from None
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)


def _unlink_quietly(path: Path) -> None:
    """Remove a temporary file; a clean-up that fails (read-only file system) never hides the cause."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write(path: Path | str, write: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Write ``path`` atomically: ``write(handle)`` fills a temporary sibling, which is renamed
    (``os.replace`` replaces a symbolic link at ``path`` itself, never its target; the temporary
    file is opened without following one)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        _unlink_quietly(tmp)  # a leftover of a dead process with this pid, or a planted link
        fd = _open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        handle: IO[Any] = open(fd, "wb") if binary else open(fd, "w", encoding="utf-8", newline="")  # noqa: SIM115
        with handle as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _unlink_quietly(tmp)
        raise output_error(path, error) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    def write(f: IO[Any]) -> None:
        f.write(text)

    return atomic_write(path, write)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    def write(f: IO[Any]) -> None:
        f.write(data)

    return atomic_write(path, write, binary=True)


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def full_disk(error: BaseException | None) -> OSError | None:
    """The ``OSError`` of a full disk or an exceeded quota in ``error``'s chain (cause, context), or None:
    a run that meets one is stopped, not marked failed — its last checkpoint resumes (docs/reliability.md)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL_DISK:
            return error
        error = error.__cause__ or error.__context__
    return None


class LogFileHandler(logging.StreamHandler):
    """A run's ``log.txt`` handler: the first write that fails (full disk, read-only file system) is one
    line on stderr and later records are dropped — never a "--- Logging error ---" traceback per record."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(open_append(path))  # no symbolic link followed
        self.path, self.broken = Path(path), False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        if not self.broken:
            self.broken = True
            sys.stderr.write(f"warning: {output_error(self.path, error)}; further log lines are dropped\n")
