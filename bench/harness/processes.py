"""Child processes that the benchmarks start, each in its own process group, and their cleanup.

Every child is started with ``start_new_session=True``, so its pid is also the id of a process
group that holds only it and its own children (an RQ worker forks its scheduler into that group).
Stopping a child signals that one group by id; nothing is ever matched by name. An atexit hook
and SIGTERM/SIGINT handlers stop whatever is still running when a benchmark fails or is
interrupted.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

_running: dict[int, subprocess.Popen[bytes]] = {}


class ChildProcess:
    """One child process and its process group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        log_file: IO[bytes] | int = subprocess.DEVNULL
        if log_path is not None:
            log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log_file = log_file
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        _running[self.pid] = self.popen

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to this child's process group (the child and what it forked)."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to ``timeout_s``, then SIGKILL it; return the exit code."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # Children of the group (an RQ scheduler process, a work horse) may outlive the leader.
        self.signal_group(signal.SIGKILL)
        try:
            code = self.popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            code = None
        _running.pop(self.pid, None)
        if not isinstance(self._log_file, int):
            self._log_file.close()
        return code

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def stop_all() -> None:
    """SIGKILL the process group of every child still registered."""
    for pid, popen in list(_running.items()):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        _running.pop(pid, None)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Raising here unwinds every `with` block, so servers and children are stopped in order.
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop all children at exit, and turn SIGTERM/SIGINT into a clean SystemExit."""
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.01):  # type: ignore[no-untyped-def]
    """Call ``predicate`` until it returns a truthy value or ``timeout_s`` passes; return the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)
