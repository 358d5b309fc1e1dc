"""Promote calls: move due ids of many queues in one round trip, returning what moved."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import ResponseError

from schedulerd.keys import Keys
from schedulerd.scripts import PROMOTE_DUE, run_script

# Return codes of promote_due.lua.
PROMOTED = 1
FENCED = 0


@dataclass(frozen=True)
class Quarantined:
    job_id: bytes
    reason: str


@dataclass(frozen=True)
class PromoteResult:
    """Outcome of one promote call for one queue."""

    queue: str
    fenced: bool
    """True when the lease was not ours at call time; nothing was touched."""
    moved: int = 0
    dropped: int = 0
    quarantined: tuple[Quarantined, ...] = ()
    now_s: float = 0.0
    """Server time the call used, Unix seconds."""
    next_due_s: float | None = None
    """Lowest score left in the scheduled set, or None when it is empty."""
    limited: int = 0
    """Ids handed to RQ 3.0's rate limiter, which pushes each when its limit has a free slot."""
    oldest_due_s: float | None = None
    """Lowest score the call took from the scheduled set, or None when it took nothing."""
    error: str | None = None
    """The Redis error the call raised (for example WRONGTYPE on the scheduled set), else None."""

    @property
    def lateness_s(self) -> float | None:
        """Worst lateness of this call: server time minus the lowest score it took."""
        if self.oldest_due_s is None or not math.isfinite(self.oldest_due_s):
            # An id scored -inf has no meaningful lateness.
            return None
        return self.now_s - self.oldest_due_s

    @property
    def backlog_left(self) -> bool:
        """True when ids are still due after this call (the batch was full)."""
        return self.next_due_s is not None and self.next_due_s <= self.now_s


def _parse_result(queue: str, reply: list[object]) -> PromoteResult:
    code = reply[0]
    if code == FENCED:
        return PromoteResult(queue=queue, fenced=True)

    moved, dropped, now_raw, next_due_raw, pairs, oldest_raw, limited = reply[1:8]
    assert isinstance(pairs, list)
    quarantined = tuple(
        Quarantined(job_id=pairs[i], reason=pairs[i + 1].decode()) for i in range(0, len(pairs), 2)
    )
    assert isinstance(now_raw, bytes)
    assert isinstance(next_due_raw, bytes)
    assert isinstance(oldest_raw, bytes)
    return PromoteResult(
        queue=queue,
        fenced=False,
        moved=int(moved),  # type: ignore[call-overload]
        dropped=int(dropped),  # type: ignore[call-overload]
        quarantined=quarantined,
        now_s=float(now_raw),
        next_due_s=float(next_due_raw) if next_due_raw else None,
        oldest_due_s=float(oldest_raw) if oldest_raw else None,
        limited=int(limited),  # type: ignore[call-overload]
    )


class Promoter:
    """Calls promote_due.lua for a set of queues, all in one pipelined round trip."""

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        batch_size: int,
        default_job_timeout_s: int,
        now_override: str = "",
    ) -> None:
        self._client = client
        # Tests set this to pin "now"; the daemon leaves it empty and uses the server clock.
        self.now_override = now_override
        self._keys = keys
        self._batch_size = batch_size
        self._default_job_timeout_s = default_job_timeout_s

    def promote(self, queues: Sequence[str], token: str) -> list[PromoteResult]:
        """Run one promote call per queue, in ``queues`` order."""
        if not queues:
            return []

        calls = [(self.call_keys(queue), self.call_args(queue, token)) for queue in queues]
        replies = run_script(self._client, PROMOTE_DUE, calls)

        results = []
        for queue, reply in zip(queues, replies):
            if isinstance(reply, ResponseError):
                results.append(PromoteResult(queue=queue, fenced=False, error=str(reply)))
            else:
                results.append(_parse_result(queue, reply))
        return results

    def call_keys(self, queue: str) -> list[str | bytes]:
        """Return the KEYS of one promote_due.lua call, as the header of the script lists them."""
        return [
            self._keys.lease(queue),
            self._keys.scheduled_set(queue),
            self._keys.queue_list(queue),
            self._keys.queues_set(),
            self._keys.quarantine(queue),
        ]

    def call_args(self, queue: str, token: str) -> list[str | bytes | int | float]:
        """Return the ARGV of one promote_due.lua call, as the header of the script lists them."""
        return [
            token,
            self._batch_size,
            self._keys.job_prefix(),
            queue,
            self._default_job_timeout_s,
            f"{self._keys.prefix}:",
            self.now_override,
        ]
