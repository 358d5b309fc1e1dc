"""Scheduled RQ jobs for the benchmarks, written the way RQ 2.12 and rq-scheduler 0.14 write them.

A real producer writes one template job per queue (``Queue.enqueue_at`` of RQ 2.12, or
``Scheduler.enqueue_at`` of rq-scheduler 0.14). A small script then writes its hash, field for
field, under fresh uuid4 ids and adds each id to the scheduled set. Scheduling 100,000 jobs one
by one through the producer API would take 40 s or more on a 2-core machine.
Every copy has the template's fields and values, created_at included.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import redis
from rq import Queue
from rq.job import Job

RQ_SCHEDULER_KEY = "rq:scheduler:scheduled_jobs"
CHUNK = 2000

# KEYS[1] scheduled set; ARGV[1] number of template fields n, ARGV[2..2n+1] field/value pairs,
# then id/score pairs. It builds job keys itself, so it suits only these benchmark servers.
COPY_JOBS_LUA = """
local field_count = tonumber(ARGV[1])
local fields = {}
for i = 2, 2 * field_count + 1 do
  fields[#fields + 1] = ARGV[i]
end
for i = 2 * field_count + 2, #ARGV, 2 do
  redis.call('HSET', 'rq:job:' .. ARGV[i], unpack(fields))
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
end
return (#ARGV - 2 * field_count - 1) / 2
"""
TEMPLATE_DELAY = timedelta(days=365)
# Job payloads: "tiny" is abs(-1), "typical" a task path with two keyword arguments, the
# others carry random bytes of the given size as the one argument.
PAYLOADS = {"tiny": 0, "typical": 0, "2KB": 2048, "20KB": 20480}


def _far_future() -> datetime:
    return datetime.now(timezone.utc) + TEMPLATE_DELAY


def enqueue_at_template(rq_queue: Queue, payload: str) -> Job:
    """Schedule the template job for ``payload`` (see PAYLOADS) far in the future."""
    if payload == "tiny":
        return rq_queue.enqueue_at(_far_future(), abs, -1)
    if payload == "typical":
        # A function given by its import path with two keyword arguments: the job's data
        # (about 100 bytes after pickle and zlib) and description exceed Redis's 64-byte
        # listpack limit, so the hash is a hashtable, as most real jobs' hashes are.
        return rq_queue.enqueue_at(
            _far_future(), "myapp.tasks.send_welcome_email", user_id=1234567, template="welcome_v2"
        )
    size = PAYLOADS[payload]
    # Random bytes, so RQ's zlib compression cannot shrink the job's data field.
    return rq_queue.enqueue_at(_far_future(), "myapp.tasks.store_blob", os.urandom(size))


def rq_template(client: redis.Redis, queue: str, payload: str = "typical") -> dict[bytes, bytes]:
    """Schedule one job with RQ 2.12's Queue.enqueue_at, read its hash, and remove it again."""
    job = enqueue_at_template(Queue(queue, connection=client), payload)
    fields: dict[bytes, bytes] = client.hgetall(job.key)
    client.zrem(f"rq:scheduled:{queue}", job.id)
    client.delete(job.key)
    return fields


def rq_scheduler_template(client: redis.Redis, queue: str) -> dict[bytes, bytes]:
    """Schedule one job with rq-scheduler 0.14's Scheduler.enqueue_at, read its hash, and remove it."""
    from rq_scheduler import Scheduler as RQSchedulerLegacy

    job = RQSchedulerLegacy(queue_name=queue, connection=client).enqueue_at(
        _far_future(), "myapp.tasks.send_welcome_email", user_id=1234567, template="welcome_v2"
    )
    fields: dict[bytes, bytes] = client.hgetall(job.key)
    client.zrem(RQ_SCHEDULER_KEY, job.id)
    client.delete(job.key)
    return fields


def write_jobs(
    client: redis.Redis,
    scheduled_key: str,
    template: dict[bytes, bytes],
    scores: Sequence[float],
) -> list[str]:
    """Write one job hash per score from ``template`` and add its id to ``scheduled_key``; return the ids."""
    ids = [str(uuid.uuid4()) for _ in scores]
    pairs = [item for pair in template.items() for item in pair]
    copy_jobs = client.register_script(COPY_JOBS_LUA)
    for start in range(0, len(ids), CHUNK):
        id_scores: list[str | float] = []
        for job_id, score in zip(ids[start:start + CHUNK], scores[start:start + CHUNK]):
            id_scores += [job_id, repr(float(score))]
        copy_jobs(keys=[scheduled_key], args=[len(template), *pairs, *id_scores])
    return ids


def schedule_rq_jobs(
    client: redis.Redis, queue: str, scores: Sequence[float], payload: str = "typical"
) -> list[str]:
    """Schedule jobs on ``queue`` as RQ 2.12 would, due at ``scores`` (Unix seconds)."""
    template = rq_template(client, queue, payload)
    ids = write_jobs(client, f"rq:scheduled:{queue}", template, scores)
    # RQ's enqueue_at registers the queue as it schedules.
    client.sadd("rq:queues", f"rq:queue:{queue}")
    return ids


def schedule_rq_scheduler_jobs(client: redis.Redis, queue: str, scores: Sequence[float]) -> list[str]:
    """Schedule jobs for ``queue`` as rq-scheduler 0.14 would, in its one shared sorted set."""
    template = rq_scheduler_template(client, queue)
    return write_jobs(client, RQ_SCHEDULER_KEY, template, scores)




