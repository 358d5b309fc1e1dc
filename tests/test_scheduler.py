"""The Scheduler loop in-process against a real redis-server: leadership, timing, stop, outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from structlog.testing import capture_logs

from schedulerd import Scheduler
from schedulerd.keys import Keys
from tests.support.waiting import wait_for

KEYS = Keys()


class Running:
    """A Scheduler running in a thread of the test process."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.ready = threading.Event()
        self.thread = threading.Thread(target=scheduler.run, daemon=True)

    def stop(self) -> None:
        self.scheduler.stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "Scheduler.run() did not return after stop()"


@pytest.fixture
def start_scheduler_on() -> Iterator[Callable[..., Running]]:
    """Start Schedulers in threads on a given server; all are stopped at test end."""
    started: list[Running] = []

    def start(server, queues=("default",), connection=None, **overrides) -> Running:
        running: Running | None = None

        def on_ready(_: Scheduler) -> None:
            assert running is not None
            running.ready.set()

        scheduler = Scheduler(
            queues, connection or redis.Redis.from_url(server.url), on_ready=on_ready, **overrides
        )
        running = Running(scheduler)
        running.thread.start()
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture
def start_scheduler(redis_server, start_scheduler_on) -> Callable[..., Running]:
    def start(*args, **kwargs) -> Running:
        return start_scheduler_on(redis_server, *args, **kwargs)

    return start


def server_now(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def schedule(client: redis.Redis, job_id: str, score: float, queue: str = "default") -> None:
    client.hset(KEYS.job_hash(job_id), mapping={"data": "payload", "status": "scheduled"})
    client.zadd(KEYS.scheduled_set(queue), {job_id: score})


def events(logs: list[dict], name: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == name]


class TestPromotion:
    def test_due_job_reaches_queue_list(self, redis_server, start_scheduler):
        client = redis_server.client()
        schedule(client, "j", server_now(client) - 1)
        start_scheduler()
        wait_for(lambda: client.lrange(KEYS.queue_list("default"), 0, -1) == [b"j"], 5)

    def test_wakes_for_job_due_before_poll_interval(self, redis_server, start_scheduler):
        client = redis_server.client()
        due_at = server_now(client) + 0.5
        schedule(client, "soon", due_at)
        start_scheduler(poll_interval=30.0)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 5)
        assert server_now(client) < due_at + 5

    def test_backlog_larger_than_batch_drains(self, redis_server, start_scheduler):
        client = redis_server.client()
        now = server_now(client)
        with client.pipeline(transaction=False) as pipe:
            for i in range(2_500):
                pipe.hset(KEYS.job_hash(f"j{i}"), "data", "x")
                pipe.zadd(KEYS.scheduled_set("default"), {f"j{i}": now - 10})
            pipe.execute()
        start_scheduler(batch_size=100)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 2_500, 10)
        assert client.zcard(KEYS.scheduled_set("default")) == 0

    def test_decoding_connection_is_accepted(self, redis_server, start_scheduler):
        client = redis_server.client()
        schedule(client, "j", server_now(client) - 1)
        start_scheduler(connection=redis.Redis.from_url(redis_server.url, decode_responses=True))
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 5)

    def test_promotions_logged_as_counts(self, redis_server, start_scheduler):
        client = redis_server.client()
        for i in range(3):
            schedule(client, f"j{i}", server_now(client) - 1)
        with capture_logs() as logs:
            running = start_scheduler()
            wait_for(lambda: client.llen(KEYS.queue_list("default")) == 3, 5)
            running.stop()
        promoted = events(logs, "jobs_promoted")
        assert sum(entry["moved"] for entry in promoted) == 3
        assert all(entry["log_level"] == "info" for entry in promoted)


class TestLeadership:
    def test_stop_releases_leases(self, redis_server, start_scheduler):
        client = redis_server.client()
        running = start_scheduler(queues=("a", "b"))
        assert running.ready.wait(5)
        assert client.get(KEYS.lease("a")) == running.scheduler.token.encode()
        running.stop()
        assert not client.exists(KEYS.lease("a"))
        assert not client.exists(KEYS.lease("b"))
        assert not client.exists(KEYS.scheduler_info(running.scheduler.token))

    @pytest.mark.parametrize("instances", [2, 3])
    def test_one_leader_per_queue(self, redis_server, start_scheduler, instances):
        client = redis_server.client()
        queues = ("a", "b", "c")
        runs = [start_scheduler(queues=queues) for _ in range(instances)]
        for running in runs:
            assert running.ready.wait(5)
        for queue in queues:
            leaders = [r for r in runs if queue in r.scheduler.leading]
            assert len(leaders) == 1
            assert client.get(KEYS.lease(queue)) == leaders[0].scheduler.token.encode()

    def test_standby_takes_over_at_once_on_stop(self, redis_server, start_scheduler):
        client = redis_server.client()
        leader = start_scheduler(contest_interval=900.0)
        assert leader.ready.wait(5)
        standby = start_scheduler(contest_interval=900.0)
        assert standby.ready.wait(5)
        assert standby.scheduler.leading == frozenset()

        leader.stop()
        wait_for(lambda: standby.scheduler.leading == {"default"}, 3)
        schedule(client, "after-handoff", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 3)

    def test_taken_lease_stops_promotion(self, redis_server, start_scheduler):
        client = redis_server.client()
        with capture_logs() as logs:
            running = start_scheduler(renew_interval=0.2, lease_ttl=1.0)
            assert running.ready.wait(5)
            client.set(KEYS.lease("default"), "4242", ex=60)
            wait_for(lambda: running.scheduler.leading == frozenset(), 3)
            schedule(client, "j", server_now(client) - 1)
            wait_for(lambda: events(logs, "lease_lost"), 3)
        assert client.llen(KEYS.queue_list("default")) == 0
        assert events(logs, "lease_lost")[0]["reason"] in ("taken", "fenced")

    def test_expired_lease_is_contested_again(self, redis_server, start_scheduler):
        client = redis_server.client()
        running = start_scheduler(renew_interval=0.2, lease_ttl=1.0, contest_interval=900.0)
        assert running.ready.wait(5)
        client.delete(KEYS.lease("default"))
        wait_for(lambda: client.get(KEYS.lease("default")) == running.scheduler.token.encode(), 3)

    def test_rq_scheduler_lock_is_respected(self, redis_server, start_scheduler):
        client = redis_server.client()
        client.set(KEYS.lease("default"), "31337", ex=60)
        schedule(client, "j", server_now(client) - 1)
        running = start_scheduler()
        assert running.ready.wait(5)
        assert running.scheduler.leading == frozenset()
        assert client.llen(KEYS.queue_list("default")) == 0


class TestOutage:
    def test_redis_down_at_start_then_up(self, redis_server, start_scheduler):
        redis_server.stop()
        with capture_logs() as logs:
            running = start_scheduler()
            wait_for(lambda: events(logs, "redis_unavailable"), 5)
            redis_server.restart()
            assert running.ready.wait(15)
            wait_for(lambda: events(logs, "redis_recovered"), 5)
        client = redis_server.client()
        schedule(client, "j", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 10)

    def test_redis_restart_mid_run(self, redis_server, start_scheduler):
        with capture_logs() as logs:
            running = start_scheduler(renew_interval=0.2, lease_ttl=1.0)
            assert running.ready.wait(5)
            redis_server.stop()
            wait_for(lambda: events(logs, "redis_unavailable"), 5)
            redis_server.restart()
            wait_for(lambda: events(logs, "redis_recovered"), 15)
        client = redis_server.client()
        # The restarted server has no data, so the lease is gone; the daemon contests it again.
        wait_for(lambda: client.get(KEYS.lease("default")) == running.scheduler.token.encode(), 10)
        schedule(client, "j", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 10)


class TestCrashFailover:
    def test_expiry_event_triggers_contest(self, redis_server_factory, start_scheduler_on):
        server = redis_server_factory(notify_keyspace_events="Ex")
        client = server.client()
        # A leader that crashed: its lease expires without renewal.
        client.set(KEYS.lease("default"), "1234", px=1000)
        with capture_logs() as logs:
            standby = start_scheduler_on(server, contest_interval=900.0)
            assert standby.ready.wait(5)
            assert standby.scheduler.leading == frozenset()
            wait_for(lambda: standby.scheduler.leading == {"default"}, 3)
        paths = events(logs, "failover_paths")[0]
        assert paths["expiry_events"] == "enabled"
        assert paths["crash_failover_worst_s"] == 11.0

    def test_without_expiry_events_standby_waits(self, redis_server, start_scheduler_on):
        client = redis_server.client()
        client.set(KEYS.lease("default"), "1234", px=300)
        with capture_logs() as logs:
            standby = start_scheduler_on(redis_server, contest_interval=900.0)
            assert standby.ready.wait(5)
            wait_for(lambda: not client.exists(KEYS.lease("default")), 3)
            # Nothing prompts a contest before the interval, so the queue stays unled.
            assert not standby.thread.join(timeout=1.0)
            assert standby.scheduler.leading == frozenset()
        assert events(logs, "failover_paths")[0]["expiry_events"] == "disabled"


class TestReconfigure:
    def test_set_queues_contests_added_and_releases_removed(self, redis_server, start_scheduler):
        client = redis_server.client()
        running = start_scheduler(queues=("a", "b"), contest_interval=900.0)
        assert running.ready.wait(5)
        running.scheduler.set_queues(["b", "c"])
        wait_for(lambda: running.scheduler.leading == {"b", "c"}, 3)
        assert not client.exists(KEYS.lease("a"))
        assert client.get(KEYS.lease("c")) == running.scheduler.token.encode()

    def test_set_queues_rejects_empty_list(self, redis_server, start_scheduler):
        from schedulerd.errors import ConfigError

        running = start_scheduler(queues=("a",))
        with pytest.raises(ConfigError):
            running.scheduler.set_queues([])


class TestQueuePatterns:
    def test_star_schedules_every_known_queue(self, redis_server, start_scheduler):
        client = redis_server.client()
        client.sadd(KEYS.queues_set(), KEYS.queue_list("a"), KEYS.queue_list("b"))
        running = start_scheduler(queues=("*",), poll_interval=0.2)
        assert running.ready.wait(5)
        wait_for(lambda: running.scheduler.leading == {"a", "b"}, 3)

    def test_new_queue_picked_up_without_restart(self, redis_server, start_scheduler):
        client = redis_server.client()
        running = start_scheduler(queues=("*",), poll_interval=0.2, contest_interval=900.0)
        assert running.ready.wait(5)
        client.sadd(KEYS.queues_set(), KEYS.queue_list("late"))
        schedule(client, "j", server_now(client) - 1, queue="late")
        wait_for(lambda: client.llen(KEYS.queue_list("late")) == 1, 3)

    def test_glob_matches_only_its_queues(self, redis_server, start_scheduler):
        client = redis_server.client()
        for name in ("reports-daily", "reports-weekly", "emails"):
            client.sadd(KEYS.queues_set(), KEYS.queue_list(name))
        running = start_scheduler(queues=("reports-*", "high"), poll_interval=0.2)
        assert running.ready.wait(5)
        wait_for(lambda: running.scheduler.leading == {"reports-daily", "reports-weekly", "high"}, 3)
        assert not client.exists(KEYS.lease("emails"))

    def test_queue_with_only_a_scheduled_set_is_found(self, redis_server, start_scheduler):
        client = redis_server.client()
        schedule(client, "j", server_now(client) - 1, queue="orphan")
        start_scheduler(queues=("*",), poll_interval=0.2)
        wait_for(lambda: client.llen(KEYS.queue_list("orphan")) == 1, 3)


class TestBalance:
    QUEUES = tuple(f"q{i}" for i in range(12))

    def leaders(self, client) -> dict[str, bytes | None]:
        return {queue: client.get(KEYS.lease(queue)) for queue in self.QUEUES}

    def test_instances_share_queues(self, redis_server, start_scheduler):
        client = redis_server.client()
        runs = [start_scheduler(queues=self.QUEUES, balance=True, renew_interval=0.2, lease_ttl=1.0) for _ in range(3)]
        for running in runs:
            assert running.ready.wait(5)

        def balanced() -> bool:
            shares = [len(running.scheduler.leading) for running in runs]
            return shares == [4, 4, 4]

        wait_for(balanced, 5)
        for queue, holder in self.leaders(client).items():
            owners = [r for r in runs if queue in r.scheduler.leading]
            assert len(owners) == 1, queue
            assert holder == owners[0].scheduler.token.encode()

    def test_joining_instance_takes_its_share_without_gap(self, redis_server, start_scheduler):
        client = redis_server.client()
        first = start_scheduler(queues=self.QUEUES, balance=True, renew_interval=0.2, lease_ttl=1.0)
        assert first.ready.wait(5)
        wait_for(lambda: len(first.scheduler.leading) == len(self.QUEUES), 3)

        second = start_scheduler(queues=self.QUEUES, balance=True, renew_interval=0.2, lease_ttl=1.0)
        unled_since: dict[str, float] = {}
        longest_gap_s = 0.0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            now = time.monotonic()
            for queue, holder in self.leaders(client).items():
                if holder is None:
                    unled_since.setdefault(queue, now)
                elif queue in unled_since:
                    longest_gap_s = max(longest_gap_s, now - unled_since.pop(queue))
            time.sleep(0.005)
        assert not unled_since
        assert len(second.scheduler.leading) == len(self.QUEUES) // 2
        assert len(first.scheduler.leading) == len(self.QUEUES) // 2
        # A queue handed over is free only between the release and the new leader's contest,
        # prompted by the release message; without that message the gap would last at least
        # the 0.6 s fallback (three renew intervals).
        assert longest_gap_s < 0.5

    def test_leaving_instance_hands_its_share_over(self, redis_server, start_scheduler):
        client = redis_server.client()
        runs = [
            start_scheduler(queues=self.QUEUES, balance=True, renew_interval=0.2, lease_ttl=1.0, contest_interval=900.0)
            for _ in range(2)
        ]
        for running in runs:
            assert running.ready.wait(5)
        wait_for(lambda: all(running.scheduler.leading for running in runs), 5)

        runs[0].stop()
        wait_for(lambda: runs[1].scheduler.leading == set(self.QUEUES), 2)
        assert not client.hexists(KEYS.members(), runs[0].scheduler.token)
