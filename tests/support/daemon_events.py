"""Waiting for and filtering the JSON log events of `schedulerd run` processes."""

from __future__ import annotations

from typing import Any

from tests.support.processes import ManagedProcess
from tests.support.schedulerd_process import DAEMON_START_TIMEOUT_S, log_events
from tests.support.waiting import wait_for

# Lease timings for failover tests: a crashed leader's lease is contested within 2.5 s.
FAST_LEASES = ("--lease-ttl", "2", "--renew-interval", "0.5", "--contest-interval", "0.5")
FAST_LEASE_TTL_S = 2.0
FAST_CONTEST_INTERVAL_S = 0.5


def events(process: ManagedProcess, name: str, **fields: Any) -> list[dict[str, Any]]:
    """Return the log events called ``name`` whose fields include ``fields``, in log order."""
    return [
        entry
        for entry in log_events(process)
        if entry.get("event") == name and all(entry.get(key) == value for key, value in fields.items())
    ]


def event_names(process: ManagedProcess) -> list[str]:
    return [str(entry.get("event")) for entry in log_events(process)]


def wait_for_event(process: ManagedProcess, name: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
    """Wait until ``process`` has logged event ``name`` with ``fields``, and return the first such event.

    Raise AssertionError with the log tail when the process exits first.
    """

    def logged() -> dict[str, Any] | None:
        found = events(process, name, **fields)
        if found:
            return found[0]
        if not process.is_running():
            raise AssertionError(
                f"{process.name} exited with code {process.returncode} before logging {name}:\n"
                f"{process.read_log()[-5000:]}"
            )
        return None

    description = f"{process.name} to log {name}" + (f" with {fields}" if fields else "")
    return wait_for(logged, timeout_s, interval_s=0.02, description=description)


def wait_ready(process: ManagedProcess) -> None:
    """Wait until the daemon has reached Redis, checked the server and is about to contest."""
    wait_for_event(process, "failover_paths", DAEMON_START_TIMEOUT_S)
