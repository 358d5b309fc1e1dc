"""Synthetic scheduled jobs written straight to Redis, and where each job id ended up.

A synthetic job is a hash {data: "x", status: "scheduled"} at rq:job:<id> plus its id in
rq:scheduled:<queue>. That is all the promote script reads, so fault tests can schedule tens
of thousands of jobs in a fraction of a second without an RQ producer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from schedulerd.keys import Keys

KEYS = Keys()
JOB_FIELDS = {"data": "x", "status": "scheduled"}
PIPELINE_CHUNK = 2000
SERVER_SIDE_CHUNK = 50_000

# Creates jobs <id_prefix><first> .. <id_prefix><last> inside the server, which is about ten
# times faster than pipelining HSET and ZADD from the client for large backlogs.
_CREATE_RANGE_LUA = """
local scheduled_key = KEYS[1]
local job_prefix, id_prefix = ARGV[1], ARGV[2]
local first, last, score = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
for i = first, last do
  local id = id_prefix .. i
  redis.call('HSET', job_prefix .. id, 'data', 'x', 'status', 'scheduled')
  redis.call('ZADD', scheduled_key, score, id)
end
return last - first + 1
"""


def server_now(client: redis.Redis) -> float:
    """Return the server's clock in Unix seconds, the clock the promote script compares with."""
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def as_bytes(job_id: str | bytes) -> bytes:
    return job_id if isinstance(job_id, bytes) else job_id.encode()


def schedule(
    client: redis.Redis, queue: str, job_ids: Iterable[str | bytes], score: float, keys: Keys = KEYS
) -> list[bytes]:
    """Create a synthetic job for each id, due at ``score``, and return the ids as bytes."""
    ids = [as_bytes(job_id) for job_id in job_ids]
    for start in range(0, len(ids), PIPELINE_CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + PIPELINE_CHUNK]:
                pipe.hset(keys.job_prefix().encode() + job_id, mapping=JOB_FIELDS)
                pipe.zadd(keys.scheduled_set(queue), {job_id: score})
            pipe.execute()
    return ids


def schedule_range(client: redis.Redis, queue: str, id_prefix: str, count: int, score: float) -> list[bytes]:
    """Create ``count`` synthetic jobs <id_prefix>1 .. <id_prefix><count>, all due at ``score``."""
    create = client.register_script(_CREATE_RANGE_LUA)
    for first in range(1, count + 1, SERVER_SIDE_CHUNK):
        last = min(first + SERVER_SIDE_CHUNK - 1, count)
        create(
            keys=[KEYS.scheduled_set(queue)], args=[KEYS.job_prefix(), id_prefix, first, last, repr(score)]
        )
    return [f"{id_prefix}{i}".encode() for i in range(1, count + 1)]


@dataclass(frozen=True)
class Placement:
    """Where job ids of one queue are: how often on the queue list, and in which sets."""

    listed: Counter[bytes]
    quarantined: frozenset[bytes]
    scheduled: frozenset[bytes]

    def duplicates(self) -> list[bytes]:
        """Ids that appear on the queue list more than once."""
        return sorted(job_id for job_id, count in self.listed.items() if count > 1)

    def missing(self, expected: Iterable[bytes]) -> list[bytes]:
        """Ids of ``expected`` that are neither on the queue list nor quarantined."""
        return sorted(
            job_id for job_id in expected if self.listed[job_id] == 0 and job_id not in self.quarantined
        )

    def unexpected(self, expected: Iterable[bytes]) -> list[bytes]:
        """Ids on the queue list that are not in ``expected``."""
        wanted = set(expected)
        return sorted(job_id for job_id in self.listed if job_id not in wanted)


def placement(client: redis.Redis, queue: str, keys: Keys = KEYS) -> Placement:
    """Read the queue list, the quarantine set and the scheduled set of ``queue``."""
    return Placement(
        listed=Counter(client.lrange(keys.queue_list(queue), 0, -1)),
        quarantined=frozenset(client.zrange(keys.quarantine(queue), 0, -1)),
        scheduled=frozenset(client.zrange(keys.scheduled_set(queue), 0, -1)),
    )


def short(ids: list[bytes], limit: int = 10) -> str:
    """Describe a list of ids briefly for an assert message."""
    shown = ", ".join(repr(job_id) for job_id in ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"{len(ids)} ids: {shown}{more}"


def assert_each_promoted_once(
    client: redis.Redis, queue: str, job_ids: Iterable[bytes], keys: Keys = KEYS
) -> Placement:
    """Assert that each id is on the queue list of ``queue`` exactly once or is quarantined.

    Also assert that the list contains no other ids and that no id is both listed and quarantined.
    Return the placement for further checks.
    """
    expected = list(job_ids)
    where = placement(client, queue, keys)
    queue_list = keys.queue_list(queue)
    duplicates = where.duplicates()
    assert not duplicates, f"on {queue_list} more than once: {short(duplicates)}"
    missing = where.missing(expected)
    still_scheduled = sorted(set(missing) & where.scheduled)
    assert not missing, (
        f"neither on {queue_list} nor quarantined: {short(missing)}; "
        f"of those, still in the scheduled set: {short(still_scheduled)}"
    )
    unexpected = where.unexpected(expected)
    assert not unexpected, f"on {queue_list} but never scheduled: {short(unexpected)}"
    both = sorted(job_id for job_id in where.quarantined if where.listed[job_id])
    assert not both, f"both on {queue_list} and quarantined: {short(both)}"
    return where
