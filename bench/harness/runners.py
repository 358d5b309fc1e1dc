"""Schedulers under test, each run as its own process so the benchmark can bound and stop it.

    python -m harness.runners KIND --url redis://127.0.0.1:PORT/0 --queues q1,q2

KIND is one of:
  schedulerd      schedulerd's Scheduler.run() through the Python API; SIGTERM calls stop()
  rq-loop         RQ 2.12's RQScheduler in its own loop (``work()``, interval 1 s)
  rq-flat         RQ 2.12's RQScheduler.enqueue_scheduled_jobs() called in a tight loop
  rq-scheduler    rq-scheduler 0.14's Scheduler.enqueue_jobs(), called once

Each runs until it is done or the benchmark stops its process group.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time

import redis


def run_schedulerd(client: redis.Redis, queues: list[str], batch_size: int) -> None:
    from schedulerd import Scheduler

    scheduler = Scheduler(queues, connection=client, batch_size=batch_size)
    signal.signal(signal.SIGTERM, lambda signum, frame: scheduler.stop())
    scheduler.run()


def run_rq_loop(client: redis.Redis, queues: list[str], interval_s: int) -> None:
    from rq.scheduler import RQScheduler

    RQScheduler(queues, connection=client, interval=interval_s, logging_level=logging.WARNING).work()


def run_rq_flat(client: redis.Redis, queues: list[str]) -> None:
    from rq.scheduler import RQScheduler

    scheduler = RQScheduler(queues, connection=client, logging_level=logging.WARNING)
    if scheduler.acquire_locks() != set(queues):
        raise SystemExit("rq-flat: could not acquire every scheduler lock")
    scheduled = [f"rq:scheduled:{queue}" for queue in queues]
    while True:
        scheduler.enqueue_scheduled_jobs()
        if sum(client.zcard(key) for key in scheduled) == 0:
            break


def run_rq_scheduler(client: redis.Redis) -> None:
    from rq_scheduler import Scheduler

    Scheduler(connection=client).enqueue_jobs()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("schedulerd", "rq-loop", "rq-flat", "rq-scheduler"))
    parser.add_argument("--url", required=True, help="Redis URL of the benchmark's own server")
    parser.add_argument("--queues", default="default", help="comma-separated queue names")
    # RQ 2.12 passes interval + 60 to EXPIRE, which rejects a float, so this is a whole number.
    parser.add_argument("--interval", type=int, default=1, help="RQScheduler interval, whole seconds")
    parser.add_argument("--batch-size", type=int, default=500, help="schedulerd batch size")
    args = parser.parse_args()

    client = redis.Redis.from_url(args.url)
    queues = [name for name in args.queues.split(",") if name]
    started = time.monotonic()
    if args.kind == "schedulerd":
        run_schedulerd(client, queues, args.batch_size)
    elif args.kind == "rq-loop":
        run_rq_loop(client, queues, args.interval)
    elif args.kind == "rq-flat":
        run_rq_flat(client, queues)
    else:
        run_rq_scheduler(client)
    print(f"{args.kind} finished after {time.monotonic() - started:.3f} s", flush=True)


if __name__ == "__main__":
    main()
