"""Daemon mode: a locked pidfile and detaching from the terminal with python-daemon."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Protocol

import daemon

from schedulerd.errors import SchedulerdError

# Another process may unlink and recreate the pidfile between our open and our lock; this
# bounds the retries that follow the new file.
LOCK_ATTEMPTS = 5

SignalHandler = Callable[[int, "FrameType | None"], None]


# A pid is at most 7 digits on Linux; anything longer or not digits is another kind of file.
PIDFILE_MAX_BYTES = 20


class NotAPidFileError(OSError):
    """The pidfile path names an existing file that contains something other than a pid."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} exists and does not contain a pid; pass a path for the pidfile alone, "
            "such as /run/schedulerd/schedulerd.pid"
        )
        self.path = path


class PidFileLockedError(SchedulerdError):
    """Another running process holds the pidfile's lock. Exit code 2."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"pid {pid}" if pid is not None else "a process that has not written its pid yet"
        super().__init__(
            f"another schedulerd is running as {holder}: pidfile {path} is locked; "
            "stop that instance first or give this one another --pidfile"
        )


class PidFile:
    """A pidfile held under an exclusive flock(2) for as long as this process runs.

    flock locks belong to the open file description, so the lock survives the forks of
    daemonizing as long as the descriptor is preserved, and the kernel drops it when the
    process dies. A pidfile whose lock is free is stale, whatever pid it names.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Lock the pidfile and write this pid; return the stale pid found in it, if any.

        Raise PidFileLockedError when another process holds the lock, and OSError when the
        file cannot be created or locked.
        """
        for _ in range(LOCK_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise PidFileLockedError(self.path, pid) from None
            except BaseException:
                os.close(fd)
                raise
            if self._is_current_file(fd):
                break
            # The holder removed the file after our open, so this lock is on an unlinked inode.
            os.close(fd)
        else:
            raise OSError(f"pidfile {self.path} was replaced {LOCK_ATTEMPTS} times while locking it")

        text = os.pread(fd, PIDFILE_MAX_BYTES + 1, 0).decode("ascii", "replace").strip()
        if text and (not text.isdigit() or len(text) > PIDFILE_MAX_BYTES):
            # Never overwrite, then delete at exit, a file that is not a pidfile (a config
            # file given by mistake, say).
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise NotAPidFileError(self.path)
        self._fd = fd
        stale_pid = _read_pid(fd)
        self.write_pid()
        return stale_pid

    def write_pid(self) -> None:
        """Write this process's pid; call again after daemonizing, which changes it."""
        assert self._fd is not None, "acquire() first"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def fileno(self) -> int | None:
        return self._fd

    def release(self) -> None:
        """Remove the pidfile and drop the lock; the file is removed only while it is still ours."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if self._is_current_file(self._fd):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def _is_current_file(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def pidfile_holder(path: str) -> tuple[bool, int | None]:
    """Return (locked, pid) for a pidfile without taking it over; (False, None) when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    try:
        pid = _read_pid(fd)
        try:
            # A shared lock fails only while another process keeps its exclusive lock.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, pid
        return False, pid
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class HasFileno(Protocol):
    def fileno(self) -> int: ...


def detach(
    preserve_fds: Iterable[int | None],
    signal_handlers: dict[signal.Signals, SignalHandler],
    log_output: HasFileno | None = None,
) -> daemon.DaemonContext:
    """Turn this process into a daemon and return the open DaemonContext.

    The working directory becomes / and the umask 0o022; stdin reads /dev/null and stdout and
    stderr go to ``log_output`` or /dev/null. Descriptors not in ``preserve_fds`` are closed, and
    ``signal_handlers`` replace python-daemon's default SIGTERM handler, which would raise
    SystemExit in the middle of a promote call.
    """
    signal_map: dict[int, SignalHandler | None] = {
        signal.SIGTSTP: None,
        signal.SIGTTIN: None,
        signal.SIGTTOU: None,
        **{int(signum): handler for signum, handler in signal_handlers.items()},
    }
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o022,
        detach_process=True,
        files_preserve=[fd for fd in preserve_fds if fd is not None],
        stdin=None,
        stdout=log_output,
        stderr=log_output,
        signal_map=signal_map,
    )
    context.open()
    return context
