"""Read job and scheduler state through RQ's own API, run under one of the `.venvs/rq-*` interpreters.

    python -m tests.support.rq_inspect statuses --url URL --ids JSON
    python -m tests.support.rq_inspect scheduler-pids --url URL --queues a,b

`statuses` prints a JSON object mapping each job id to `Job.fetch(id).get_status()`, or null
when RQ raises NoSuchJobError. `scheduler-pids` prints a JSON object mapping each queue name to
`Queue.scheduler_pid`, which RQ reads from the scheduler lock (and, from RQ 2.10, from the
scheduler hash that the lock value names).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from redis import Redis
from rq import Queue  # type: ignore[import-not-found,unused-ignore]
from rq.exceptions import NoSuchJobError  # type: ignore[import-not-found,unused-ignore]
from rq.job import Job  # type: ignore[import-not-found,unused-ignore]


def job_statuses(connection: Redis, job_ids: list[str]) -> dict[str, Any]:
    statuses: dict[str, Any] = {}
    for job_id in job_ids:
        try:
            status = Job.fetch(job_id, connection=connection).get_status()
        except NoSuchJobError:
            statuses[job_id] = None
            continue
        # RQ returns a JobStatus str enum, or None for a job hash without a status.
        statuses[job_id] = None if status is None else str(getattr(status, "value", status))
    return statuses


def scheduler_pids(connection: Redis, queues: list[str]) -> dict[str, Any]:
    return {name: Queue(name, connection=connection).scheduler_pid for name in queues}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read RQ job and scheduler state as JSON.")
    commands = parser.add_subparsers(dest="command", required=True)
    statuses = commands.add_parser("statuses", help="print each job's status")
    statuses.add_argument("--url", required=True, help="Redis URL")
    statuses.add_argument("--ids", required=True, help="JSON list of job ids")
    pids = commands.add_parser("scheduler-pids", help="print Queue.scheduler_pid for each queue")
    pids.add_argument("--url", required=True, help="Redis URL")
    pids.add_argument("--queues", required=True, help="comma-separated queue names")
    args = parser.parse_args(argv)

    connection = Redis.from_url(args.url)
    if args.command == "statuses":
        result = job_statuses(connection, [str(job_id) for job_id in json.loads(args.ids)])
    else:
        result = scheduler_pids(connection, [name for name in args.queues.split(",") if name])
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
