"""Server-side timestamps of when ids become poppable from a queue list, as a worker would see them.

A thread blocks in BLPOP like an RQ worker. When an id arrives, it runs MULTI, TIME, LRANGE,
LTRIM, EXEC, so every id on the list at that moment gets the same server time and the list is
emptied for the next BLPOP. Ids pushed inside one Lua script or one MULTI/EXEC become visible
together when it ends, so this is the time a worker could first have popped them. The stamp
trails the push by one wake-up and round trip of this thread, typically well under a
millisecond on an idle machine, more when the CPUs are busy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class Arrival:
    at_s: float
    """Server time at which the id was seen on the list, Unix seconds."""
    job_id: str


class QueueConsumer:
    """A thread that pops every id from one queue list and stamps it with the server's TIME."""

    def __init__(self, client: redis.Redis, queue_key: str, expected: int) -> None:
        self._client = client
        self._queue_key = queue_key
        self._expected = expected
        self._stopping = threading.Event()
        self.arrivals: list[Arrival] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._consume, name="queue-consumer", daemon=True)

    def start(self) -> QueueConsumer:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return len(self.arrivals) >= self._expected

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10.0)
        if self._thread.is_alive():
            raise RuntimeError("the queue consumer did not stop within 10 s")
        if self.error is not None:
            raise RuntimeError(f"the queue consumer failed: {self.error}") from self.error

    def _consume(self) -> None:
        try:
            while not self._stopping.is_set() and not self.done:
                popped = self._client.blpop([self._queue_key], timeout=0.2)
                if popped is None:
                    continue
                with self._client.pipeline(transaction=True) as pipe:
                    pipe.time()
                    pipe.lrange(self._queue_key, 0, -1)
                    pipe.ltrim(self._queue_key, 1, 0)
                    (seconds, microseconds), rest, _ = pipe.execute()
                at_s = seconds + microseconds / 1e6
                for job_id in [popped[1], *rest]:
                    self.arrivals.append(Arrival(at_s, job_id.decode()))
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error
