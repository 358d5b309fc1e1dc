"""Real `schedulerd run` processes for tests, and the JSON log events they write."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.fixture_types import StartProcess
from tests.support.processes import ManagedProcess
from tests.support.rq_processes import child_env
from tests.support.waiting import wait_for

SCHEDULERD = Path(sys.executable).parent / "schedulerd"
DAEMON_START_TIMEOUT_S = 15.0


def schedulerd_env() -> dict[str, str]:
    """Return the daemon's environment without inherited SCHEDULERD_* and RQ_* variables.

    schedulerd reads both as settings (RQ_KEY_PREFIX as its key prefix), and a test must not
    depend on the caller's shell.
    """
    env = {key: value for key, value in child_env().items() if not key.startswith("SCHEDULERD_")}
    # A config file at the default path would also feed settings into the daemon.
    env["SCHEDULERD_CONFIG"] = os.devnull
    return env


def start_schedulerd(
    start_process: StartProcess,
    url: str,
    queues: Sequence[str],
    *extra: str,
    name: str = "schedulerd",
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Start `schedulerd run` with JSON logs and wait until it has logged `daemon_started`.

    `extra` are more command-line arguments; `env` adds variables to the daemon's environment.
    """
    argv = [
        str(SCHEDULERD), "run", "--log-format", "json",
        "--queues", ",".join(queues), "--redis-url", url, *extra,
    ]  # fmt: skip
    process = start_process(argv, env={**schedulerd_env(), **(env or {})}, name=name)
    daemon_token(process)
    return process


def log_events(process: ManagedProcess) -> list[dict[str, Any]]:
    """Return every JSON log line of `process` as a dict; other lines are skipped."""
    events = []
    for line in process.read_log().splitlines():
        if not line.startswith("{"):
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            # The last line may still be half written.
            continue
    return events


def daemon_token(process: ManagedProcess) -> str:
    """Return the lease token from the process's `daemon_started` line, waiting for it."""

    def started_event() -> dict[str, Any] | None:
        if not process.is_running():
            raise RuntimeError(f"{process.name} exited with code {process.returncode}:\n{process.read_log()}")
        return next((event for event in log_events(process) if event.get("event") == "daemon_started"), None)

    event = wait_for(started_event, DAEMON_START_TIMEOUT_S, interval_s=0.02, description="daemon_started")
    return str(event["token"])


def promoted_count(process: ManagedProcess, queue: str) -> int:
    """Sum `moved` over the process's `jobs_promoted` lines for `queue`.

    The daemon logs these totals at most every 10 s and once more when it stops, so the sum is
    complete only after the process has exited.
    """
    return sum(
        int(event.get("moved", 0))
        for event in log_events(process)
        if event.get("event") == "jobs_promoted" and event.get("queue") == queue
    )
