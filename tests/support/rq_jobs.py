"""Job functions that RQ workers of every tested RQ release (1.16, 2.12, 3.0) can run.

Each job writes what happened to plain Redis keys through the connection of the job being run,
so a test reads the results with any client and needs no RQ import:

- `test:ran`: list of markers, one entry per run or attempt, in run order.
- `test:ran_at:<marker>`: list of run start times (epoch seconds, as strings) for that marker.
- `test:ran_ids`: list of the job ids that ran, in run order.
- `test:attempts:<marker>`: attempt counter kept by `fail_times`.

Only the main virtual environment imports this module without RQ installed, so the RQ import
happens inside the functions.
"""

from __future__ import annotations

import time
from typing import Any

RAN_KEY = "test:ran"
RAN_IDS_KEY = "test:ran_ids"


def ran_at_key(marker: str) -> str:
    return f"test:ran_at:{marker}"


def attempts_key(marker: str) -> str:
    return f"test:attempts:{marker}"


def _current_job() -> Any:
    from rq import get_current_job  # type: ignore[import-not-found,unused-ignore]

    job = get_current_job()
    if job is None:
        raise RuntimeError("this function must run inside an RQ worker")
    return job


def _write_run(job: Any, marker: str, started_at: float) -> None:
    # One transaction, so a reader never sees the marker without its time and id.
    pipeline = job.connection.pipeline(transaction=True)
    pipeline.rpush(RAN_KEY, marker)
    pipeline.rpush(ran_at_key(marker), repr(started_at))
    pipeline.rpush(RAN_IDS_KEY, job.id)
    pipeline.execute()


def record(marker: str) -> str:
    """Record one run of `marker` and return the marker."""
    started_at = time.time()
    _write_run(_current_job(), marker, started_at)
    return marker


def fail_times(marker: str, n: int) -> str:
    """Record the attempt, then raise on each of the first `n` attempts for `marker`.

    The counter lives in Redis, so it counts attempts across retries and across workers.
    """
    started_at = time.time()
    job = _current_job()
    attempt = int(job.connection.incr(attempts_key(marker)))
    _write_run(job, marker, started_at)
    if attempt <= n:
        raise RuntimeError(f"planned failure {attempt} of {n} for marker {marker!r}")
    return marker


def sleep_then_record(marker: str, seconds: float) -> str:
    """Sleep `seconds`, then record the run with its start time, which keeps a worker busy."""
    started_at = time.time()
    job = _current_job()
    time.sleep(seconds)
    _write_run(job, marker, started_at)
    return marker
