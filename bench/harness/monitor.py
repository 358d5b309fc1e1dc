"""Server-side timestamps of queue pushes, read from Redis MONITOR.

MONITOR sends every command the server runs, including those inside Lua scripts and MULTI/EXEC
blocks, prefixed with the server's wall-clock time in microseconds at the moment it ran. A push
onto a queue list (RPUSH or LPUSH of rq:queue:<name>) therefore gets the server time at which the
id landed, the same clock that a promote script's TIME reads, and no consumer's scheduling delay
or round trip is added. But the server formats every command for MONITOR, those inside a
script too, which stretches a script that pushes hundreds of ids several times over. Use it
where jobs arrive a few at a time.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import redis

STOP_MARKER = "schedulerd-bench-monitor-stop"
# 1733345678.123456 [0 lua] "RPUSH" "rq:queue:default" "id1" "id2"
LINE = re.compile(r'^(?P<at>\d+\.\d+) \[(?P<db>\d+) (?P<source>[^\]]+)\] (?P<args>.*)$')
ARGUMENT = re.compile(r'"((?:[^"\\]|\\.)*)"')
PUSH_COMMANDS = {"RPUSH", "LPUSH"}


@dataclass(frozen=True)
class Push:
    at_s: float
    """Server time of the push, Unix seconds."""
    queue_key: str
    job_id: str
    source: str
    """``lua`` for a push inside a script, else the client's address."""


class PushMonitor:
    """A thread that records every push onto a queue list until stop()."""

    def __init__(self, client: redis.Redis, queue_prefix: str = "rq:queue:") -> None:
        # redis-py 8 times a read out after 5 s by default, and a quiet server sends nothing
        # for longer than that, so the reader gets a client of its own without that limit.
        kwargs = client.connection_pool.connection_kwargs
        self._client = redis.Redis(
            host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0), socket_timeout=None
        )
        self._queue_prefix = queue_prefix
        self.pushes: list[Push] = []
        self.commands_seen = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, name="push-monitor", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> PushMonitor:
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError("MONITOR did not start within 5 s")
        return self

    def stop(self) -> None:
        """Send the stop marker through a normal command and wait for the reader to see it."""
        self._client.echo(STOP_MARKER)
        self._thread.join(timeout=30.0)
        if self._thread.is_alive():
            raise RuntimeError("the MONITOR reader did not stop within 30 s")
        if self.error is not None:
            raise RuntimeError(f"the MONITOR reader failed: {self.error}") from self.error

    def _read(self) -> None:
        connection = self._client.connection_pool.get_connection()
        try:
            connection.send_command("MONITOR")
            connection.read_response()
            self._ready.set()
            while True:
                line = connection.read_response()
                text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
                self.commands_seen += 1
                if STOP_MARKER in text:
                    return
                self._parse(text)
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error
            self._ready.set()
        finally:
            connection.disconnect()

    def _parse(self, text: str) -> None:
        match = LINE.match(text)
        if match is None:
            return
        arguments = ARGUMENT.findall(match["args"])
        if len(arguments) < 3 or arguments[0].upper() not in PUSH_COMMANDS:
            return
        if not arguments[1].startswith(self._queue_prefix):
            return
        at_s = float(match["at"])
        for job_id in arguments[2:]:
            self.pushes.append(Push(at_s, arguments[1], job_id, match["source"]))
