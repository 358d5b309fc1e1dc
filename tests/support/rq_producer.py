"""Schedule RQ jobs from a JSON spec, run under one of the `.venvs/rq-*` interpreters.

    python -m tests.support.rq_producer --url URL --queue NAME --spec JSON

The spec is a JSON list of objects with these fields:

    kind      "enqueue_at", "enqueue_in" or "enqueue" (immediate, for comparison); required
    at        enqueue_at only: due time in epoch seconds (float); required for enqueue_at
    naive     enqueue_at only: pass a naive local datetime instead of an aware UTC one
    in_s      enqueue_in only: delay in seconds (float); required for enqueue_in
    marker    string that the job function records; required
    func      "record" (default), "fail_times" or "sleep_then_record"
    fail_n    fail_times only: number of attempts that raise (default 1)
    sleep_s   sleep_then_record only: seconds to sleep (default 1.0)
    at_front  enqueue at the head of the queue list when promoted (default false)
    ttl       job TTL in seconds, or null
    retry     [max, interval_s] for rq.Retry, or null
    retry_at_front  pass enqueue_at_front=True to rq.Retry, which RQ 1.16 lacks (default false)
    repeat    [times, interval_s] for rq.Repeat (RQ 2.3 and later), or null
    job_id    explicit job id, or absent for a generated one
    timeout   job timeout in seconds (RQ's job_timeout), or absent for the queue default
    description  job description string, or absent for RQ's generated one
    result_ttl   seconds RQ keeps a successful job's result, or absent
    failure_ttl  seconds RQ keeps a failed job, or absent
    meta      JSON object stored as the job's meta, or absent
    queue     queue name for this job instead of --queue, or absent
    rate_limit  [key, concurrency] for rq.rate_limit.RateLimit (not in RQ 1.16 or 2.12), or absent

Prints the JSON list of created job ids on stdout. Exits 2 on an invalid spec, before creating any job.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from redis import Redis
from rq import Queue, Retry  # type: ignore[import-not-found,unused-ignore]

from tests.support import rq_jobs

KINDS = {"enqueue_at", "enqueue_in", "enqueue"}
FIELDS = {
    "kind", "at", "naive", "in_s", "marker", "func", "fail_n", "sleep_s",
    "at_front", "ttl", "retry", "retry_at_front", "repeat", "job_id",
    "timeout", "description", "result_ttl", "failure_ttl", "meta", "queue", "rate_limit",
}  # fmt: skip


class SpecError(ValueError):
    """An item of the spec is invalid."""


def _job_call(item: dict[str, Any]) -> tuple[Any, tuple[Any, ...]]:
    func = item.get("func", "record")
    marker = item["marker"]
    if func == "record":
        return rq_jobs.record, (marker,)
    if func == "fail_times":
        return rq_jobs.fail_times, (marker, int(item.get("fail_n", 1)))
    if func == "sleep_then_record":
        return rq_jobs.sleep_then_record, (marker, float(item.get("sleep_s", 1.0)))
    raise SpecError(f"unknown func {func!r}: expected record, fail_times or sleep_then_record")


def _options(item: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"at_front": bool(item.get("at_front", False))}
    if item.get("ttl") is not None:
        options["ttl"] = int(item["ttl"])
    if item.get("job_id") is not None:
        options["job_id"] = str(item["job_id"])
    if item.get("timeout") is not None:
        options["job_timeout"] = int(item["timeout"])
    if item.get("description") is not None:
        options["description"] = str(item["description"])
    for name in ("result_ttl", "failure_ttl"):
        if item.get(name) is not None:
            options[name] = int(item[name])
    if item.get("meta") is not None:
        if not isinstance(item["meta"], dict):
            raise SpecError(f"meta must be a JSON object, got {item['meta']!r}")
        options["meta"] = dict(item["meta"])
    if item.get("retry") is not None:
        max_retries, interval_s = item["retry"]
        retry_options: dict[str, Any] = {}
        if item.get("retry_at_front", False):
            # RQ 1.16's Retry has no enqueue_at_front and raises TypeError for it.
            retry_options["enqueue_at_front"] = True
        try:
            options["retry"] = Retry(max=int(max_retries), interval=int(interval_s), **retry_options)
        except TypeError as error:
            raise SpecError(
                f"this RQ release's Retry does not take {sorted(retry_options)}: {error}"
            ) from error
    elif item.get("retry_at_front", False):
        raise SpecError("retry_at_front needs retry")
    if item.get("repeat") is not None:
        try:
            from rq import Repeat  # type: ignore[attr-defined,unused-ignore]
        except ImportError as error:
            raise SpecError("repeat needs rq.Repeat, which exists only in RQ 2.3 and later") from error
        times, interval_s = item["repeat"]
        options["repeat"] = Repeat(times=int(times), interval=int(interval_s))
    if item.get("rate_limit") is not None:
        try:
            from rq.rate_limit import RateLimit  # type: ignore[import-not-found,unused-ignore]
        except ImportError as error:
            raise SpecError(
                "rate_limit needs rq.rate_limit.RateLimit, which RQ 1.16 and 2.12 lack"
            ) from error
        key, concurrency = item["rate_limit"]
        options["rate_limit"] = RateLimit(str(key), int(concurrency))
    return options


def _due_datetime(item: dict[str, Any]) -> datetime:
    if "at" not in item:
        raise SpecError("enqueue_at needs 'at' (epoch seconds)")
    at = float(item["at"])
    if item.get("naive", False):
        # RQ reads a naive datetime as the producer's local time.
        return datetime.fromtimestamp(at)
    return datetime.fromtimestamp(at, tz=timezone.utc)


@dataclass(frozen=True)
class PlannedJob:
    """One validated spec item, ready to be sent to RQ."""

    kind: str
    func: Any
    args: tuple[Any, ...]
    options: dict[str, Any]
    due_at: datetime | None
    delay: timedelta | None
    queue: str | None = None


def plan(item: dict[str, Any]) -> PlannedJob:
    """Validate one spec item and plan its job. Raise SpecError naming the problem."""
    unknown = set(item) - FIELDS
    if unknown:
        raise SpecError(f"unknown fields {sorted(unknown)}, allowed fields are {sorted(FIELDS)}")
    if "marker" not in item:
        raise SpecError("every item needs a 'marker'")
    kind = item.get("kind")
    if kind not in KINDS:
        raise SpecError(f"unknown kind {kind!r}: expected one of {sorted(KINDS)}")
    if kind == "enqueue_in" and "in_s" not in item:
        raise SpecError("enqueue_in needs 'in_s' (seconds)")

    func, args = _job_call(item)
    queue = item.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise SpecError(f"queue must be a non-empty string, got {queue!r}")
    return PlannedJob(
        kind=kind,
        func=func,
        args=args,
        options=_options(item),
        due_at=_due_datetime(item) if kind == "enqueue_at" else None,
        delay=timedelta(seconds=float(item["in_s"])) if kind == "enqueue_in" else None,
        queue=queue,
    )


def schedule(queue: Queue, planned: PlannedJob) -> str:
    """Create the planned job and return its id."""
    if planned.due_at is not None:
        job = queue.enqueue_at(planned.due_at, planned.func, *planned.args, **planned.options)
    elif planned.delay is not None:
        job = queue.enqueue_in(planned.delay, planned.func, *planned.args, **planned.options)
    else:
        job = queue.enqueue(planned.func, *planned.args, **planned.options)
    return str(job.id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Schedule RQ jobs described by a JSON spec.")
    parser.add_argument("--url", required=True, help="Redis URL")
    parser.add_argument("--queue", required=True, help="RQ queue name")
    parser.add_argument("--spec", required=True, help="JSON list of job descriptions")
    args = parser.parse_args(argv)

    try:
        spec = json.loads(args.spec)
        if not isinstance(spec, list) or not all(isinstance(item, dict) for item in spec):
            raise SpecError("the spec must be a JSON list of objects")
        # Validate every item before creating any job, so a bad spec leaves Redis untouched.
        planned_jobs = [plan(item) for item in spec]
    except (SpecError, json.JSONDecodeError, TypeError, ValueError) as error:
        print(f"error: invalid spec: {error}", file=sys.stderr)
        return 2

    connection = Redis.from_url(args.url)
    queues: dict[str, Queue] = {}
    job_ids = []
    for planned in planned_jobs:
        name = planned.queue or args.queue
        if name not in queues:
            queues[name] = Queue(name, connection=connection)
        job_ids.append(schedule(queues[name], planned))
    print(json.dumps(job_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
