"""Read what the job functions of tests.support.rq_jobs recorded, with any Redis client."""

from __future__ import annotations

from collections import Counter

import redis

from tests.support.rq_jobs import RAN_IDS_KEY, RAN_KEY, ran_at_key
from tests.support.waiting import WaitTimeout, wait_for


def _texts(values: list[bytes | str]) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else value for value in values]


def ran_markers(client: redis.Redis) -> list[str]:
    """Return the markers of every run so far, in run order."""
    return _texts(client.lrange(RAN_KEY, 0, -1))


def ran_ids(client: redis.Redis) -> list[str]:
    """Return the job id of every run so far, in run order."""
    return _texts(client.lrange(RAN_IDS_KEY, 0, -1))


def ran_at(client: redis.Redis, marker: str) -> list[float]:
    """Return the start times (epoch seconds) of every run of `marker`."""
    return [float(value) for value in _texts(client.lrange(ran_at_key(marker), 0, -1))]


def run_counts(client: redis.Redis) -> Counter[str]:
    """Return how often each marker has run."""
    return Counter(ran_markers(client))


def wait_for_runs(client: redis.Redis, count: int, timeout_s: float) -> None:
    """Wait until at least `count` runs are recorded in total; on timeout, name the markers that ran."""
    try:
        wait_for(
            lambda: client.llen(RAN_KEY) >= count,
            timeout_s,
            interval_s=0.05,
            description=f"{count} recorded job runs",
        )
    except WaitTimeout as error:
        counts = run_counts(client)
        raise WaitTimeout(
            f"{error}; {sum(counts.values())} runs recorded: {dict(sorted(counts.items()))}"
        ) from None
