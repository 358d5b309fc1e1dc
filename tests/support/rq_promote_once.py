"""Promote due jobs once with RQ's own scheduler, run under one of the `.venvs/rq-*` interpreters.

    python -m tests.support.rq_promote_once --url URL --queues a,b

Does what one pass of `rq worker --with-scheduler` does: RQScheduler(queues).acquire_locks(),
then enqueue_scheduled_jobs() for the queues whose lock it got. The locks stay in Redis until
they expire (RQ sets interval + 60 s), like those of a scheduler that crashed after its pass.
Prints the sorted JSON list of queues whose lock it acquired.
"""

from __future__ import annotations

import argparse
import json
import sys

from redis import Redis
from rq.scheduler import RQScheduler  # type: ignore[import-not-found,unused-ignore]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one promotion pass of RQ's own scheduler.")
    parser.add_argument("--url", required=True, help="Redis URL")
    parser.add_argument("--queues", required=True, help="comma-separated queue names")
    args = parser.parse_args(argv)

    queues = [name for name in args.queues.split(",") if name]
    result_stream = sys.stdout
    # RQScheduler attaches a log handler to sys.stdout as it is at construction, and its
    # lines would corrupt the JSON result, so RQ gets stderr instead.
    sys.stdout = sys.stderr
    scheduler = RQScheduler(queues, connection=Redis.from_url(args.url))
    acquired = scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()
    print(json.dumps(sorted(acquired)), file=result_stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
