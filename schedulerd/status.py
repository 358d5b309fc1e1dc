"""Queue status read from Redis alone: who leads each queue, and how much of it is scheduled and due.

Used by ``schedulerd status`` and by the scrape-time gauges of /metrics. Nothing here writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from redis import Redis

from schedulerd.keys import Keys

LEADER_SCHEDULERD = "schedulerd"
LEADER_RQ = "rq"
LEADER_NONE = "none"
# `schedulerd status` exits 1 when a due job has waited longer than this.
DEFAULT_MAX_OVERDUE_S = 60.0


@dataclass(frozen=True)
class QueueCounts:
    """Contents of one queue's scheduled set at one server time."""

    scheduled: int
    due: int
    """Ids whose score is at or before now."""
    oldest_overdue_s: float | None
    """Now minus the lowest due score; None when nothing is due."""
    next_due_in_s: float | None
    """Time until the lowest score after now; None when nothing is scheduled later."""


@dataclass(frozen=True)
class Leader:
    """The holder of a queue's lease, as far as the lease value and the info hash tell."""

    kind: str
    """LEADER_SCHEDULERD, LEADER_RQ (RQ's built-in scheduler) or LEADER_NONE."""
    value: str | None = None
    """The lease value: a schedulerd token, an RQ < 2.10 pid, or an RQ 2.10+ scheduler name."""
    hostname: str | None = None
    pid: int | None = None

    def describe(self) -> str:
        if self.kind == LEADER_NONE:
            return "none"
        where = ""
        if self.hostname is not None or self.pid is not None:
            where = f" on {self.hostname or '?'} pid {self.pid if self.pid is not None else '?'}"
        if self.kind == LEADER_SCHEDULERD:
            return f"schedulerd {self.value}{where}"
        return f"rq built-in scheduler ({self.value}){where}"


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    leader: Leader
    lease_ttl_left_s: float | None
    """Time until the lease key expires; None when there is no lease or it has no expiry."""
    counts: QueueCounts


def server_time_s(client: Redis) -> float:
    seconds, microseconds = client.time()
    return float(seconds) + microseconds / 1e6


def read_queue_counts(client: Redis, keys: Keys, queues: Sequence[str]) -> dict[str, QueueCounts]:
    """Read scheduled, due, oldest overdue and next due for each queue, by the server's clock."""
    now_s = server_time_s(client)
    pipeline = client.pipeline(transaction=False)
    for queue in queues:
        scheduled_set = keys.scheduled_set(queue)
        pipeline.zcard(scheduled_set)
        pipeline.zcount(scheduled_set, "-inf", now_s)
        pipeline.zrange(scheduled_set, 0, 0, withscores=True)
        pipeline.zrangebyscore(scheduled_set, f"({now_s}", "+inf", start=0, num=1, withscores=True)
    replies = pipeline.execute()

    counts = {}
    for index, queue in enumerate(queues):
        scheduled, due, lowest, next_after_now = replies[4 * index:4 * index + 4]
        oldest_overdue_s = None
        if due and lowest:
            oldest_overdue_s = _finite_or_none(max(0.0, now_s - float(lowest[0][1])))
        next_due_in_s = None
        if next_after_now:
            # A score of +inf never falls due; JSON has no infinity, so it reads as none.
            next_due_in_s = _finite_or_none(float(next_after_now[0][1]) - now_s)
        counts[queue] = QueueCounts(int(scheduled), int(due), oldest_overdue_s, next_due_in_s)
    return counts


def read_status(client: Redis, keys: Keys, queues: Sequence[str]) -> list[QueueStatus]:
    """Read the lease holder, lease time left and counts of each queue."""
    pipeline = client.pipeline(transaction=False)
    for queue in queues:
        pipeline.get(keys.lease(queue))
        pipeline.pttl(keys.lease(queue))
    replies = pipeline.execute()
    values = [_text(replies[2 * index]) for index in range(len(queues))]
    ttls_ms = [int(replies[2 * index + 1]) for index in range(len(queues))]

    # RQ 2.10+ and schedulerd both describe a lease holder in <prefix>:scheduler:<lease value>.
    pipeline = client.pipeline(transaction=False)
    for value in values:
        pipeline.hgetall(keys.scheduler_info(value or ""))
    infos = pipeline.execute()

    counts = read_queue_counts(client, keys, queues)
    statuses = []
    for queue, value, ttl_ms, info in zip(queues, values, ttls_ms, infos):
        # PTTL returns -2 for a missing key and -1 for a key without expiry.
        lease_ttl_left_s = ttl_ms / 1000 if ttl_ms >= 0 else None
        statuses.append(QueueStatus(queue, _leader(value, info), lease_ttl_left_s, counts[queue]))
    return statuses


def _leader(value: str | None, info: dict[bytes, bytes]) -> Leader:
    if value is None:
        return Leader(LEADER_NONE)
    fields = {_text(name): _text(field) for name, field in info.items()}
    hostname = fields.get("hostname")
    pid_text = fields.get("pid") or ""
    pid = int(pid_text) if pid_text.isdigit() else None
    # A schedulerd token is digits only and has an info hash. RQ < 2.10 writes its pid (digits,
    # no hash), and RQ 2.10+ a hex uuid as its name (with a hash).
    if value.isdigit() and info:
        return Leader(LEADER_SCHEDULERD, value, hostname, pid)
    if value.isdigit():
        return Leader(LEADER_RQ, value, None, int(value))
    return Leader(LEADER_RQ, value, hostname, pid)


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def find_problems(statuses: Sequence[QueueStatus], max_overdue_s: float) -> list[str]:
    """Return one line per queue without a leader or with a job overdue by more than ``max_overdue_s``."""
    problems = []
    for status in statuses:
        if status.leader.kind == LEADER_NONE:
            problems.append(f"queue {status.queue}: no scheduler holds the lease")
        overdue_s = status.counts.oldest_overdue_s
        if overdue_s is not None and overdue_s > max_overdue_s:
            problems.append(
                f"queue {status.queue}: {status.counts.due} jobs due, the oldest overdue by "
                f"{overdue_s:.1f} s (limit {max_overdue_s:g} s)"
            )
    return problems


def format_json(statuses: Sequence[QueueStatus], problems: Sequence[str]) -> str:
    document = {
        "ok": not problems,
        "problems": list(problems),
        "queues": [
            {
                "queue": status.queue,
                "leader": {**asdict(status.leader), "description": status.leader.describe()},
                "lease_ttl_left_s": status.lease_ttl_left_s,
                **asdict(status.counts),
            }
            for status in statuses
        ],
    }
    return json.dumps(document, indent=2)


def format_table(statuses: Sequence[QueueStatus], problems: Sequence[str]) -> str:
    header = ("QUEUE", "LEADER", "LEASE LEFT", "SCHEDULED", "DUE", "OLDEST OVERDUE", "NEXT DUE IN")
    rows = [header]
    for status in statuses:
        counts = status.counts
        rows.append((
            status.queue,
            status.leader.describe(),
            _seconds(status.lease_ttl_left_s),
            str(counts.scheduled),
            str(counts.due),
            _seconds(counts.oldest_overdue_s),
            _seconds(counts.next_due_in_s),
        ))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.extend(problems)
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
