"""Child processes started by a test, with their output kept in files and stopped at test end.

Every process starts in its own session, so its process group id equals its pid. Stopping
sends SIGTERM to that pid, waits, and then sends SIGKILL to the whole group: that also reaches
children which the process forked and left behind, such as an RQ worker's scheduler process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_STOP_TIMEOUT_S = 5.0
# Failure reports show only the end of each log, because a long-running worker's log can be large.
LOG_TAIL_CHARS = 20_000


@dataclass
class ManagedProcess:
    """One started process and the file that contains its stdout and stderr."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.time)
    _group_killed: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def send_signal(self, signum: int) -> None:
        """Send `signum` to the process itself, not its group. Do nothing once it has exited."""
        if self.is_running():
            self.popen.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        """Wait for exit and return the exit code. Raise subprocess.TimeoutExpired on timeout."""
        return self.popen.wait(timeout=timeout_s)

    def kill(self) -> None:
        """Send SIGKILL to the process group and reap the leader. Later calls do nothing."""
        if self._group_killed:
            return
        self._kill_group()
        self._group_killed = True
        self.popen.wait()

    def terminate(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """Send SIGTERM, wait up to `timeout_s`, then SIGKILL the group, and return the exit code."""
        self.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        return self.popen.returncode

    def _kill_group(self) -> None:
        # Linux keeps a group id allocated while any member lives, even after the leader is
        # reaped, so this reaches only our descendants. An empty group raises ProcessLookupError.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessTracker:
    """Starts processes for one test and stops every one of them at the end.

    Processes started with `stop_last=True` (Redis servers) are stopped after all others, so
    that workers and daemons can still reach Redis while they shut down.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []
        self._stop_last: set[int] = set()

    def start(
        self,
        argv: Sequence[str | os.PathLike[str]],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        name: str | None = None,
        stop_last: bool = False,
    ) -> ManagedProcess:
        """Start `argv` with stdout and stderr appended to `log_path`.

        `env` replaces the environment when given. The default log file is named after the
        process in the tracker's log directory.
        """
        argv_text = [os.fspath(part) for part in argv]
        name = name or Path(argv_text[0]).name
        if log_path is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{len(self.processes):02d}-{name}.log"

        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv_text,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = ManagedProcess(name=name, argv=argv_text, log_path=log_path, popen=popen)
        self.processes.append(process)
        if stop_last:
            self._stop_last.add(id(process))
        return process

    def stop_all(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop every process: all early ones together, then all `stop_last` ones together."""
        early = [p for p in self.processes if id(p) not in self._stop_last]
        late = [p for p in self.processes if id(p) in self._stop_last]
        for wave in (early, late):
            _stop_together(wave, timeout_s)

    def log_sections(self) -> list[tuple[str, str]]:
        """Return a (title, log tail) pair for every process, for failure reports."""
        sections = []
        for process in self.processes:
            text = process.read_log()
            if len(text) > LOG_TAIL_CHARS:
                text = "[...]\n" + text[-LOG_TAIL_CHARS:]
            state = "running" if process.is_running() else f"exit code {process.returncode}"
            title = f"{process.name} (pid {process.pid}, {state}) {process.log_path}"
            sections.append((title, text))
        return sections


def _stop_together(processes: list[ManagedProcess], timeout_s: float) -> None:
    # One SIGTERM to each, then one shared deadline, so stopping N idle workers takes one
    # timeout rather than N.
    for process in processes:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        remaining_s = max(0.0, deadline - time.monotonic())
        try:
            process.popen.wait(timeout=remaining_s)
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        process.kill()
