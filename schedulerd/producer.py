"""Sub-second scheduling for RQ producers: ``pip install 'schedulerd[rq]'``.

RQ stores a scheduled job's due time in whole seconds, so ``queue.enqueue_at()`` can fire a
job up to a second early. ``enqueue_at`` and ``enqueue_in`` here write the same job hash, the
same rq:queues entry and the same scheduled-set member as RQ's own, in one MULTI/EXEC, but
with the exact due time as the score, and then wake the schedulerd leader so it fires the job
within milliseconds of that time. Jobs scheduled this way run on any RQ worker; RQ's own
scheduler also promotes them, on its usual one-second grid.

Only this module imports rq; the daemon never does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from schedulerd.keys import Keys


def enqueue_at(
    queue: Any,
    when: datetime,
    func: str | Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **job_options: Any,
) -> Any:
    """Schedule ``func(*args, **kwargs)`` on the RQ ``queue`` for the instant ``when``.

    ``when`` must be timezone-aware: RQ reads naive datetimes as local time, with a daylight
    saving error before RQ 3.0, and this helper does not guess. ``job_options`` go to RQ's
    ``Queue.create_job`` unchanged (``job_id``, ``timeout``, ``ttl``, ``result_ttl``,
    ``failure_ttl``, ``description``, ``meta``, ``retry``, ...). Returns the RQ Job.
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"naive datetime {when.isoformat()} passed to enqueue_at; pass a timezone-aware "
            "datetime, e.g. datetime.now(timezone.utc) + timedelta(seconds=5)"
        )
    from rq.job import JobStatus
    from rq.registry import ScheduledJobRegistry

    job = queue.create_job(func, args=tuple(args), kwargs=dict(kwargs or {}), status=JobStatus.SCHEDULED, **job_options)
    registry = ScheduledJobRegistry(queue=queue)
    keys = Keys(_key_prefix(queue))
    due_s = when.timestamp()

    with queue.connection.pipeline() as pipe:
        # The same writes as RQ's Queue.schedule_job, except the score keeps its fraction.
        pipe.sadd(queue.redis_queues_keys, queue.key)
        job.save(pipeline=pipe)
        job.cleanup(ttl=job.ttl, pipeline=pipe)
        pipe.zadd(registry.key, {job.id: due_s})
        pipe.publish(keys.wakeup_channel(), queue.name)
        pipe.execute()
    return job


def enqueue_in(
    queue: Any,
    delay: timedelta,
    func: str | Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **job_options: Any,
) -> Any:
    """Schedule ``func(*args, **kwargs)`` on ``queue`` to run ``delay`` from now (this host's clock)."""
    return enqueue_at(queue, datetime.now(timezone.utc) + delay, func, args, kwargs, **job_options)


def _key_prefix(queue: Any) -> str:
    # RQ 3.0 takes its prefix from RQ_KEY_PREFIX; the queue's own key shows which one it used.
    suffix = f":queue:{queue.name}"
    key: str = queue.key
    return key[: -len(suffix)] if key.endswith(suffix) else "rq"
