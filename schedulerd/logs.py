"""structlog configuration: JSON for machines, a console renderer for terminals, stderr or a log file."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LogFile:
    """A log file opened for appending, which ``reopen()`` replaces by a new handle on the same path.

    logrotate renames the file and then sends SIGHUP; the reopen creates a new file at the old
    path. Each line is written and flushed under a lock, so a reopen on another thread never
    splits a line between the two files or writes to a closed handle.
    """

    def __init__(self, path: str, capture_std_streams: bool = False) -> None:
        self.path = path
        self.capture_std_streams = capture_std_streams
        """Point stdout and stderr at each newly opened file too; set in daemon mode once detached."""
        # Reentrant, because a signal handler may log on the main thread while it is writing a line.
        self._lock = threading.RLock()
        self._file = self._open(path)

    def _open(self, path: str) -> TextIO:
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by reopen() and close()
        if self.capture_std_streams:
            # Tracebacks and warnings that bypass structlog still reach the current file.
            os.dup2(handle.fileno(), sys.stdout.fileno())
            os.dup2(handle.fileno(), sys.stderr.fileno())
        return handle

    def fileno(self) -> int:
        return self._file.fileno()

    def write_line(self, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def reopen(self, path: str | None = None) -> None:
        """Open ``path`` (by default the same path again); raise OSError and keep the old handle when that fails."""
        path = self.path if path is None else path
        new_file = self._open(path)
        with self._lock:
            old_file, self._file = self._file, new_file
            self.path = path
        old_file.close()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _StreamWriter:
    """Writes whole lines to a stream such as stderr, one thread at a time."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        # Reentrant, because a signal handler may log on the main thread while it is writing a line.
        self._lock = threading.RLock()

    def write_line(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class _LineLogger:
    """A structlog logger that hands each rendered event to a LogFile or a _StreamWriter."""

    def __init__(self, writer: LogFile | _StreamWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        try:
            self._writer.write_line(message)
        except (OSError, ValueError):
            # A full disk or a closed stream must not stop scheduling; the line is lost.
            pass

    log = debug = info = warn = warning = error = critical = exception = failure = fatal = msg


def configure_logging(
    log_format: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    log_file: LogFile | None = None,
) -> None:
    """Send log events to ``log_file`` when given, else to ``stream`` (stderr by default), one line each.

    ``auto`` picks the console renderer when the output is a terminal and JSON otherwise
    (journald, containers, files).
    """
    writer: LogFile | _StreamWriter
    if log_file is not None:
        writer, is_terminal = log_file, False
    else:
        output = stream if stream is not None else sys.stderr
        writer, is_terminal = _StreamWriter(output), output.isatty()
    if log_format == "auto":
        log_format = "console" if is_terminal else "json"

    renderer: structlog.typing.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=is_terminal)

    def logger_factory(*args: Any) -> _LineLogger:
        return _LineLogger(writer)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=logger_factory,
        cache_logger_on_first_use=False,
    )


class LogOutput:
    """The current log output, stderr or a LogFile, with the format and level in force.

    ``apply`` switches all three at once, at start and after a reload; ``reopen`` serves logrotate.
    """

    def __init__(self) -> None:
        self.log_file: LogFile | None = None
        self._capture_std_streams = False

    def capture_std_streams(self) -> None:
        """Point stdout and stderr at every log file opened from now on (daemon mode, once detached)."""
        self._capture_std_streams = True
        if self.log_file is not None:
            self.log_file.capture_std_streams = True

    def apply(self, log_format: str, level: str, path: str | None) -> None:
        """Configure logging; raise OSError, leaving the current output in place, when ``path`` cannot be opened."""
        if path is not None:
            if self.log_file is None:
                self.log_file = LogFile(path, self._capture_std_streams)
            elif self.log_file.path != path:
                # The same LogFile object switches paths, so loggers bound before the switch follow it.
                self.log_file.reopen(path)
            configure_logging(log_format, level, log_file=self.log_file)
        else:
            # NOTE: a LogFile given up here stays open, because a thread may still be writing to it.
            self.log_file = None
            configure_logging(log_format, level)

    @property
    def log_file_path(self) -> str | None:
        return None if self.log_file is None else self.log_file.path

    def reopen(self) -> str | None:
        """Reopen the log file, if any, and return its path; raise OSError when that fails."""
        if self.log_file is None:
            return None
        self.log_file.reopen()
        return self.log_file.path
