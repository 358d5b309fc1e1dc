"""systemd's sd_notify protocol: readiness, status, watchdog and stop messages as datagrams to $NOTIFY_SOCKET.

The protocol is newline-separated VARIABLE=value assignments in one datagram to the AF_UNIX
socket named by $NOTIFY_SOCKET; a name starting with "@" is in the abstract namespace
(sd_notify(3)). Sending needs no library, so schedulerd adds no dependency for it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING

import structlog

from schedulerd.observer import Observer

if TYPE_CHECKING:
    from schedulerd.daemon import Scheduler
    from schedulerd.promoter import PromoteResult

log = structlog.get_logger("schedulerd")

# STATUS= is resent at most this often when only the promoted-jobs count changed.
STATUS_INTERVAL_S = 2.0


class Notifier:
    """Sends sd_notify messages to one socket; a failed send is logged once per run of failures."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._failing = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier | None:
        """Return a Notifier for $NOTIFY_SOCKET, or None when it is unset or not an AF_UNIX address.

        The variable is removed from ``environ`` (os.environ by default), so child processes such
        as a local redis-server do not send to systemd in schedulerd's name.
        """
        environ = os.environ if environ is None else environ
        address = environ.pop("NOTIFY_SOCKET", "")
        if not address:
            return None
        if not address.startswith(("/", "@")):
            # systemd 254+ can also name an AF_VSOCK address (vsock:CID:PORT), used for virtual machines.
            log.warning("notify_socket_unsupported", notify_socket=address, detail="only AF_UNIX paths and @names")
            return None
        return cls(address)

    def send(self, *assignments: str) -> bool:
        """Send VARIABLE=value lines in one datagram; return False when the send failed."""
        payload = "\n".join(assignments).encode("utf-8")
        try:
            self._socket.sendto(payload, self._target)
        except OSError as error:
            if not self._failing:
                log.warning("notify_failed", notify_socket=self.address, error=str(error))
                self._failing = True
            return False
        if self._failing:
            log.info("notify_recovered", notify_socket=self.address)
            self._failing = False
        return True

    def fileno(self) -> int:
        return self._socket.fileno()

    def reloading(self) -> bool:
        """Send RELOADING=1 with the monotonic timestamp that systemd 253+ requires next to it."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def close(self) -> None:
        self._socket.close()


def watchdog_interval_s(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Return how often to send WATCHDOG=1 (half of $WATCHDOG_USEC), or None when no watchdog is set.

    Like sd_watchdog_enabled(3), a $WATCHDOG_PID naming another process means the watchdog is not ours.
    """
    environ = os.environ if environ is None else environ
    usec_text = environ.get("WATCHDOG_USEC", "")
    pid_text = environ.get("WATCHDOG_PID", "")
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    if pid_text and pid_text != str(os.getpid() if pid is None else pid):
        return None
    return int(usec_text) / 1e6 / 2


class SystemdNotifier(Observer):
    """Follows the scheduler and reports to systemd: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1.

    WATCHDOG=1 goes out only from a loop iteration that finished without a Redis error, so a
    scheduler that is stuck or cut off from Redis for longer than WatchdogSec gets restarted.
    """

    def __init__(
        self,
        notifier: Notifier,
        scheduler: Scheduler,
        watchdog_interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._scheduler = scheduler
        self._watchdog_interval_s = watchdog_interval_s
        self._clock = clock
        self._held: set[str] = set()
        self._promoted = 0
        self._redis_error: str | None = None
        self._next_watchdog_at = 0.0
        self._next_status_at = 0.0
        self._sent_status = ""

    def status_text(self) -> str:
        """Return the one-line STATUS= summary, for example "leading 3 of 5 queues; 120 jobs promoted"."""
        configured = self._scheduler.queues
        leading = len(self._held & set(configured))
        text = f"leading {leading} of {len(configured)} queues; {self._promoted} jobs promoted"
        if self._redis_error is not None:
            text = f"Redis unavailable: {self._redis_error}; {text}"
        return text

    def ready(self, scheduler: Scheduler) -> None:
        self._send("READY=1", self._status_assignment())

    def iteration_finished(self, scheduler: Scheduler) -> None:
        now = self._clock()
        assignments = []
        if self._watchdog_interval_s is not None and now >= self._next_watchdog_at:
            assignments.append("WATCHDOG=1")
            self._next_watchdog_at = now + self._watchdog_interval_s
        recovered = self._redis_error is not None
        self._redis_error = None
        if recovered or now >= self._next_status_at:
            status = self.status_text()
            if status != self._sent_status:
                assignments.append(self._status_assignment())
        if assignments:
            self._send(*assignments)

    def redis_failed(self, scheduler: Scheduler, error: Exception) -> None:
        first_failure = self._redis_error is None
        self._redis_error = str(error).splitlines()[0] if str(error) else type(error).__name__
        # The first good iteration after the outage pings at once, instead of waiting out the interval.
        self._next_watchdog_at = 0.0
        if first_failure:
            self._send(self._status_assignment())

    def promote_finished(self, result: PromoteResult, duration_s: float) -> None:
        self._promoted += result.moved

    def lease_changed(self, queue: str, event: str, reason: str | None = None) -> None:
        if event == "acquired":
            self._held.add(queue)
        else:
            self._held.discard(queue)
        self._send(self._status_assignment())

    def stopping(self, scheduler: Scheduler) -> None:
        self._send("STOPPING=1", "STATUS=stepping down: releasing leases")

    def _status_assignment(self) -> str:
        self._sent_status = self.status_text()
        self._next_status_at = self._clock() + STATUS_INTERVAL_S
        return "STATUS=" + self._sent_status

    def _send(self, *assignments: str) -> None:
        self._notifier.send(*assignments)
