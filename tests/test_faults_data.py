"""Hostile data in Redis: broken jobs, keys of the wrong type, odd ids, scores and queue names, huge backlogs.

For each case the daemon must keep running, keep the other jobs and queues moving, and log what
happened in one clear line. Each test ends by checking where every job id went.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from schedulerd.keys import Keys
from tests.support.daemon_events import FAST_LEASES, events, wait_for_event, wait_ready
from tests.support.processes import ManagedProcess
from tests.support.schedulerd_process import daemon_token, start_schedulerd
from tests.support.synthetic_jobs import (
    JOB_FIELDS,
    assert_each_promoted_once,
    placement,
    schedule,
    schedule_range,
    server_now,
    short,
)
from tests.support.waiting import wait_for

KEYS = Keys()
QUEUE = "default"
# Long enough for about ten promote passes at --poll-interval 0.2.
BROKEN_FOR_S = 2.0


def start_daemon(start_process, url: str, queues=(QUEUE,), *extra: str) -> ManagedProcess:
    daemon = start_schedulerd(
        start_process, url, list(queues), *FAST_LEASES, "--poll-interval", "0.2", *extra
    )
    wait_ready(daemon)
    return daemon


def wait_leading(client, daemon: ManagedProcess, queue: str = QUEUE) -> None:
    token = daemon_token(daemon).encode()
    wait_for(lambda: client.get(KEYS.lease(queue)) == token, 10, description=f"the daemon to lead {queue!r}")


def wait_drained(client, queue: str = QUEUE, timeout_s: float = 10) -> None:
    wait_for(
        lambda: client.zcard(KEYS.scheduled_set(queue)) == 0, timeout_s, description=f"{queue!r} drained"
    )


def stop_cleanly(daemon: ManagedProcess) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 0, daemon.read_log()[-3000:]


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def non_json_lines(daemon: ManagedProcess) -> list[str]:
    """Return the log lines that a strict JSON parser rejects (Infinity and NaN included)."""
    bad = []
    for line in daemon.read_log().splitlines():
        try:
            json.loads(line, parse_constant=reject_constant)
        except ValueError:
            bad.append(line)
    return bad


def anywhere(client, job_id: bytes, queue: str = QUEUE) -> bool:
    """Return whether ``job_id`` is scheduled, listed or quarantined. A key of the wrong type counts as empty."""
    if client.zscore(KEYS.scheduled_set(queue), job_id) is not None:
        return True
    if (
        client.type(KEYS.queue_list(queue)) == b"list"
        and client.lpos(KEYS.queue_list(queue), job_id) is not None
    ):
        return True
    quarantine = KEYS.quarantine(queue)
    return client.type(quarantine) == b"zset" and client.zscore(quarantine, job_id) is not None


def wait_logged(daemon: ManagedProcess, name: str, count: int, total_of: str | None = None) -> list[dict]:
    """Wait until ``daemon`` logged ``count`` events ``name`` (or their ``total_of`` fields sum to ``count``).

    A promote call's log lines follow its reply, so a drained scheduled set does not mean they are written.
    """

    def logged() -> list[dict] | None:
        found = events(daemon, name)
        total = sum(entry[total_of] for entry in found) if total_of else len(found)
        return found if total >= count else None

    return wait_for(logged, 5, description=f"{count} {name} logged")


class TestBrokenJobs:
    def test_orphan_ids_dropped_and_counted(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        now = server_now(client)
        orphans = [f"orphan-{number}".encode() for number in range(100)]
        client.zadd(KEYS.scheduled_set(QUEUE), {job_id: now - 1 for job_id in orphans})
        good = schedule(client, QUEUE, [f"good-{number}" for number in range(100)], now - 1)

        wait_drained(client)
        where = assert_each_promoted_once(client, QUEUE, good)
        assert not set(orphans) & set(where.listed)
        assert not set(orphans) & where.quarantined
        dropped = wait_logged(daemon, "jobs_dropped", len(orphans), total_of="dropped")
        assert sum(entry["dropped"] for entry in dropped) == len(orphans)
        stop_cleanly(daemon)

    @pytest.mark.parametrize(
        ("job_key_value", "reason"),
        [({"status": "scheduled"}, "no_data"), (["a", "list"], "wrong_type"), ("a string", "wrong_type")],
        ids=["hash-without-data", "list", "string"],
    )
    def test_unusable_job_key_is_quarantined(self, redis_server, start_process, job_key_value, reason):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        now = server_now(client)
        bad = [f"bad-{number}".encode() for number in range(20)]
        for job_id in bad:
            key = KEYS.job_prefix().encode() + job_id
            if isinstance(job_key_value, dict):
                client.hset(key, mapping=job_key_value)
            elif isinstance(job_key_value, list):
                client.rpush(key, *job_key_value)
            else:
                client.set(key, job_key_value)
            client.zadd(KEYS.scheduled_set(QUEUE), {job_id: now - 1})
        good = schedule(client, QUEUE, [f"good-{number}" for number in range(100)], now - 1)

        wait_drained(client)
        where = assert_each_promoted_once(client, QUEUE, good + bad)
        assert where.quarantined == set(bad)
        quarantined = wait_logged(daemon, "job_quarantined", len(bad))
        assert sorted(entry["job_id"].encode() for entry in quarantined) == sorted(bad)
        assert {entry["reason"] for entry in quarantined} == {reason}
        stop_cleanly(daemon)

    @pytest.mark.parametrize("poison", ["non-integer-ttl", "rate-limit-key-wrong-type"])
    def test_poisoned_job_loses_no_other_job(self, redis_server, start_process, poison):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        now = server_now(client)
        good = schedule(client, QUEUE, [f"good-{number}" for number in range(100)], now - 1)
        poisoned = KEYS.job_hash("poisoned")
        if poison == "non-integer-ttl":
            client.hset(poisoned, mapping={**JOB_FIELDS, "ttl": "1.5"})
        else:
            # An RQ 3.0 job with a rate limit, whose limiter configuration key is not a hash.
            client.hset(
                poisoned, mapping={**JOB_FIELDS, "rate_limit_key": "api", "rate_limit_concurrency": "1"}
            )
            client.set("rq:rl:api", "not a hash")
        client.zadd(KEYS.scheduled_set(QUEUE), {"poisoned": now - 2})

        wait_drained(client)
        where = placement(client, QUEUE)
        lost = where.missing(good)
        assert lost == [], f"good jobs lost with the poisoned one: {short(lost)}"
        assert where.duplicates() == []


class TestWrongKeyTypes:
    @pytest.mark.slow
    def test_wrong_type_scheduled_set_recovers(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url, ["broken", "healthy"])
        wait_leading(client, daemon, "broken")
        wait_leading(client, daemon, "healthy")
        client.set(KEYS.scheduled_set("broken"), "not a sorted set")
        healthy = schedule(client, "healthy", [f"h-{number}" for number in range(50)], server_now(client) - 1)
        failed = wait_for_event(daemon, "promote_failed", 10, queue="broken")
        wait_drained(client, "healthy")
        time.sleep(BROKEN_FOR_S)

        client.delete(KEYS.scheduled_set("broken"))
        repaired = schedule(client, "broken", [f"b-{number}" for number in range(50)], server_now(client) - 1)
        wait_for_event(daemon, "promote_recovered", 10, queue="broken")
        wait_drained(client, "broken")
        assert_each_promoted_once(client, "healthy", healthy)
        assert_each_promoted_once(client, "broken", repaired)
        assert "WRONGTYPE" in failed["error"]
        assert len(events(daemon, "promote_failed")) == 1
        assert not events(daemon, "redis_unavailable")
        stop_cleanly(daemon)

    @pytest.mark.slow
    @pytest.mark.parametrize(
        "broken_key",
        [
            pytest.param(
                KEYS.queue_list(QUEUE),
                id="queue-list",
            ),
            pytest.param(
                KEYS.quarantine(QUEUE),
                id="quarantine",
            ),
        ],
    )
    def test_wrong_type_key_loses_no_job(self, redis_server, start_process, broken_key):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        client.set(broken_key, "not the right type")
        now = server_now(client)
        # One job without data, so the quarantine is written to.
        client.hset(KEYS.job_hash("no-data"), mapping={"status": "scheduled"})
        client.zadd(KEYS.scheduled_set(QUEUE), {"no-data": now - 2})
        job_ids = [b"no-data"] + schedule(client, QUEUE, [f"job-{number}" for number in range(20)], now - 1)
        wait_for_event(daemon, "promote_failed", 10, queue=QUEUE)
        time.sleep(BROKEN_FOR_S)

        vanished = [job_id for job_id in job_ids if not anywhere(client, job_id)]
        client.delete(broken_key)
        wait_drained(client)
        assert not vanished, f"gone from Redis while {broken_key} had the wrong type: {short(vanished)}"
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert len(events(daemon, "promote_failed")) == 1
        stop_cleanly(daemon)

    @pytest.mark.slow
    def test_wrong_type_queues_set_atomic_calls(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        client.set(KEYS.queues_set(), "not a set")
        job_ids = schedule(client, QUEUE, [f"job-{number}" for number in range(200)], server_now(client) - 1)
        wait_for_event(daemon, "promote_failed", 10, queue=QUEUE)
        time.sleep(BROKEN_FOR_S)

        moved = client.llen(KEYS.queue_list(QUEUE))
        client.delete(KEYS.queues_set())
        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert moved in (0, len(job_ids)), f"{moved} of {len(job_ids)} jobs moved while promote calls failed"

    def test_wrong_type_lease_blocks_one_queue(self, redis_server, start_process):
        client = redis_server.client()
        client.rpush(KEYS.lease("blocked"), "not a lease")
        daemon = start_daemon(start_process, redis_server.url, ["blocked", "healthy"])
        job_ids = schedule(
            client, "healthy", [f"job-{number}" for number in range(20)], server_now(client) - 1
        )

        wait_drained(client, "healthy", timeout_s=5)
        assert_each_promoted_once(client, "healthy", job_ids)
        assert not events(daemon, "redis_unavailable")


class TestOddIds:
    def test_odd_ids_promoted_once(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        odd_ids = [
            b"\xff\xfe\x80-not-utf8",
            b"caf\xe9-latin-1",
            "naïve-队列-🚀".encode(),
            b"with space and\nnewline",
            b"x" * 65_536,
            b"y" * 1_048_576,
        ]
        job_ids = schedule(client, QUEUE, odd_ids, server_now(client) - 1)
        # An unusable job with a non-UTF-8 id, so its id goes through the job_quarantined log line.
        client.hset(KEYS.job_prefix().encode() + b"\xff-no-data", mapping={"status": "scheduled"})
        client.zadd(KEYS.scheduled_set(QUEUE), {b"\xff-no-data": server_now(client) - 1})

        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids + [b"\xff-no-data"])
        for job_id in odd_ids:
            assert client.hget(KEYS.job_prefix().encode() + job_id, "status") == b"queued"
        quarantined = wait_for_event(daemon, "job_quarantined", 5, queue=QUEUE)
        assert quarantined["job_id"] == "\\xff-no-data"
        stop_cleanly(daemon)
        assert non_json_lines(daemon) == []


class TestScores:
    def test_due_promoted_future_kept(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        now = server_now(client)
        due = {
            b"minus-inf": float("-inf"),
            b"negative": -5.0,
            b"epoch": 0.0,
            b"far-past": 1.0,
            b"just-due": now + 0.3,
        }
        not_due = {b"plus-inf": float("inf"), b"year-5138": 1e11}
        for job_id, score in {**due, **not_due}.items():
            schedule(client, QUEUE, [job_id], score)

        wait_for(
            lambda: client.zcard(KEYS.scheduled_set(QUEUE)) == len(not_due), 5, description="due ids promoted"
        )
        time.sleep(0.5)
        later = schedule(client, QUEUE, [b"later"], server_now(client) + 0.3)
        wait_for(
            lambda: client.zcard(KEYS.scheduled_set(QUEUE)) == len(not_due), 5, description="the later job"
        )
        assert_each_promoted_once(client, QUEUE, list(due) + later)
        assert placement(client, QUEUE).scheduled == set(not_due)
        assert daemon.is_running()

    def test_minus_infinity_keeps_json_logs(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url)
        wait_leading(client, daemon)
        schedule(client, QUEUE, [b"minus-inf"], float("-inf"))
        wait_drained(client)
        stop_cleanly(daemon)
        assert non_json_lines(daemon) == []


class TestQueueNames:
    @pytest.mark.slow
    def test_spaces_colons_unicode_names(self, redis_server_factory, start_process):
        server = redis_server_factory(notify_keyspace_events="Ex")
        client = server.client()
        queues = ["with space", "a:b:c", "élan-队列-🚀"]
        leader = start_daemon(start_process, server.url, queues)
        for queue in queues:
            wait_leading(client, leader, queue)
        standby = start_daemon(start_process, server.url, queues)
        scheduled = {
            queue: schedule(
                client, queue, [f"{queue}-{number}" for number in range(20)], server_now(client) - 1
            )
            for queue in queues
        }
        for queue in queues:
            wait_drained(client, queue)

        # The standby decodes the expired lease key names to find each queue again.
        leader.kill()
        for queue in queues:
            wait_leading(client, standby, queue)
        for queue in queues:
            scheduled[queue] += schedule(client, queue, [f"{queue}-after"], server_now(client))
        for queue in queues:
            wait_drained(client, queue)
            assert_each_promoted_once(client, queue, scheduled[queue])
            assert client.hget(KEYS.job_hash(f"{queue}-0"), "origin") == queue.encode()
        assert client.sismember(KEYS.queues_set(), KEYS.queue_list("élan-队列-🚀"))
        stop_cleanly(standby)


class TestScheduledSetVanishes:
    def start_drain(self, client, daemon: ManagedProcess) -> list[bytes]:
        wait_leading(client, daemon)
        job_ids = schedule_range(client, QUEUE, "job-", 20_000, server_now(client) - 1)
        wait_for(
            lambda: client.zcard(KEYS.scheduled_set(QUEUE)) < 15_000,
            10,
            interval_s=0.001,
            description="the drain to start",
        )
        return job_ids

    def test_deleted_mid_drain(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url, [QUEUE], "--batch-size", "100")
        job_ids = self.start_drain(client, daemon)
        with client.pipeline(transaction=True) as pipe:
            pipe.zrange(KEYS.scheduled_set(QUEUE), 0, -1)
            pipe.delete(KEYS.scheduled_set(QUEUE))
            deleted, _ = pipe.execute()
        later = schedule(client, QUEUE, [f"later-{number}" for number in range(50)], server_now(client))

        wait_drained(client)
        deleted_ids = set(deleted)
        promoted_before = [job_id for job_id in job_ids if job_id not in deleted_ids]
        where = assert_each_promoted_once(client, QUEUE, promoted_before + later)
        assert not deleted_ids & set(where.listed)
        assert not events(daemon, "promote_failed")
        stop_cleanly(daemon)

    def test_renamed_and_back_mid_drain(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url, [QUEUE], "--batch-size", "100")
        job_ids = self.start_drain(client, daemon)
        parked = KEYS.scheduled_set(QUEUE) + ":parked"
        client.rename(KEYS.scheduled_set(QUEUE), parked)
        time.sleep(1.0)
        listed_while_parked = client.llen(KEYS.queue_list(QUEUE))
        time.sleep(0.5)
        assert client.llen(KEYS.queue_list(QUEUE)) == listed_while_parked
        client.rename(parked, KEYS.scheduled_set(QUEUE))

        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert not events(daemon, "promote_failed")
        stop_cleanly(daemon)


class TestHostileMessages:
    """Messages on the handoff channel come from anyone who may PUBLISH, so they are input too."""

    DEAF_STANDBY = ("--lease-ttl", "2", "--renew-interval", "0.5", "--contest-interval", "60")

    @pytest.mark.parametrize(
        "message",
        [
            pytest.param(b"not json", id="not-json"),
            pytest.param(b"null", id="null"),
            pytest.param(b"\xff\xfe", id="not-utf8"),
            pytest.param(
                b"[" * 100_000 + b"]" * 100_000,
                id="deeply-nested",
            ),
        ],
    )
    def test_garbage_keeps_listener_alive(self, redis_server, start_process, message):
        client = redis_server.client()
        leader = start_daemon(start_process, redis_server.url, [QUEUE])
        wait_leading(client, leader)
        standby = start_daemon(start_process, redis_server.url, [QUEUE], *self.DEAF_STANDBY)
        standby_token = daemon_token(standby).encode()
        time.sleep(0.3)
        assert client.publish(KEYS.handoff_channel(), message) == 2
        time.sleep(0.3)

        stop_cleanly(leader)
        wait_for(
            lambda: client.get(KEYS.lease(QUEUE)) == standby_token,
            2,
            description="the standby to hear the step-down",
        )
        assert standby.is_running()


class TestMillionBacklog:
    BACKLOG = 1_000_000
    BATCH_SIZE = 200
    # Redis serves no other client while a script runs, so a promote call should stay within this.
    # SLOWLOG durations are wall-clock time and include any time the OS preempts redis-server, so
    # on a busy machine single calls run over. The 99th percentile is the stable measure, and the
    # maximum is held only to a bound that a call scanning the whole backlog would break.
    MAX_P99_CALL_US = 10_000
    MAX_CALL_US = 50_000
    SLOWLOG_ENTRIES = 20_000
    # Redis 6.2 also logs the commands a script runs, each taking microseconds. This threshold
    # keeps them out and every promote call of a full batch in.
    SLOWLOG_THRESHOLD_US = 1_000

    @pytest.mark.slow
    def test_drains_without_slow_calls(self, redis_server_factory, start_process, record_property):
        server = redis_server_factory(
            slowlog_log_slower_than=self.SLOWLOG_THRESHOLD_US, slowlog_max_len=self.SLOWLOG_ENTRIES
        )
        client = server.client()
        job_ids = schedule_range(client, QUEUE, "m-", self.BACKLOG, server_now(client) - 1)
        client.slowlog_reset()
        started_at = time.monotonic()
        daemon = start_daemon(start_process, server.url, [QUEUE], "--batch-size", str(self.BATCH_SIZE))
        wait_drained(client, timeout_s=120)
        drain_s = time.monotonic() - started_at

        durations_us = sorted(
            entry["duration"]
            for entry in client.slowlog_get(self.SLOWLOG_ENTRIES)
            if entry["command"].startswith(b"EVALSHA")
            and KEYS.scheduled_set(QUEUE).encode() in entry["command"]
        )
        p99_us = durations_us[int(len(durations_us) * 0.99)]
        record_property("drain_s", round(drain_s, 1))
        record_property(
            "promote_call_us",
            {"p50": durations_us[len(durations_us) // 2], "p99": p99_us, "max": durations_us[-1]},
        )
        assert_each_promoted_once(client, QUEUE, job_ids)
        # Calls faster than the threshold are not logged, so a few may be missing.
        assert len(durations_us) >= self.BACKLOG // self.BATCH_SIZE * 9 // 10
        assert p99_us <= self.MAX_P99_CALL_US
        assert durations_us[-1] <= self.MAX_CALL_US
        stop_cleanly(daemon)
