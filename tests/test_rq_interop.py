"""schedulerd as the only scheduler of real RQ producers and workers, for each RQ release.

Every test runs a real redis-server, a real `schedulerd run` process, producers of the RQ
release under test and plain `rq worker` processes without --with-scheduler, so only schedulerd
moves jobs from rq:scheduled:<queue> onto rq:queue:<queue>. Run counts are checked after a
settle time longer than the daemon's poll interval, so a duplicate promotion would have run too.
"""

from __future__ import annotations

import itertools
import signal
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.support.fixture_types import StartProcess, StartWorker
from tests.support.job_runs import ran_at, ran_ids, ran_markers, run_counts, wait_for_runs
from tests.support.processes import ManagedProcess
from tests.support.redis_server import RedisServer
from tests.support.rq_jobs import attempts_key
from tests.support.rq_processes import produce
from tests.support.rq_tools import job_statuses, rq_info, scheduler_pids
from tests.support.rqenvs import RQEnv
from tests.support.schedulerd_process import daemon_token, promoted_count, start_schedulerd
from tests.support.waiting import wait_for

QUEUE = "default"
SCHEDULED_KEY = f"rq:scheduled:{QUEUE}"
QUEUE_KEY = f"rq:queue:{QUEUE}"
LEASE_KEY = f"rq:scheduler-lock:{QUEUE}"
DAEMON_OPTIONS = ("--lease-ttl", "3", "--renew-interval", "1")
# The daemon wakes at the next due time or after its 1 s poll interval, whichever is first, so a
# second promotion of the same id, and the run it causes, would show up within this time.
SETTLE_S = 1.5
# A job may start this long after its due time: promotion lateness plus the worker's fork.
MAX_LATENESS_S = 1.5
RUN_TIMEOUT_S = 20.0
DAEMON_STOP_TIMEOUT_S = 10.0
# How long each rate-limited job runs, and so holds its limiter slot.
SLOT_HOLD_S = 0.3
BERLIN = ZoneInfo("Europe/Berlin")
# Europe/Berlin's summer offset, UTC+2, which RQ before 3.0 applies to every naive datetime.
BERLIN_DST_OFFSET_S = 7200


def kill_processes(*processes: ManagedProcess) -> None:
    """SIGKILL the process groups of workers and daemons whose shutdown a test does not check.

    It saves time at teardown: an RQ 2.12 or 3.0 worker stopped with SIGTERM sometimes hangs for
    seconds while it unsubscribes from its pubsub channel, and schedulerd takes about 1 s to
    stop its release-message listener.
    """
    for process in processes:
        process.kill()


def stop_daemon(daemon: ManagedProcess) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(DAEMON_STOP_TIMEOUT_S) == 0


def naive_score_in_berlin(rq_env: RQEnv, due_at: float) -> float:
    """Return the score that `rq_env` gives a naive datetime meaning `due_at` in Europe/Berlin.

    RQ 3.0 converts a naive datetime with astimezone(), which applies the offset in force on
    that date. RQ 1.16 and 2.12 build a fixed offset from time.altzone whenever the zone has
    DST at all (time.daylight != 0), so they read a winter datetime with the summer offset and
    score it one hour early. Shanghai has no DST, so every release scores it right.
    """
    if rq_env.version_info >= (3, 0):
        return due_at
    offset = BERLIN.utcoffset(datetime.fromtimestamp(due_at, tz=BERLIN))
    assert offset is not None
    return due_at - (BERLIN_DST_OFFSET_S - offset.total_seconds())


class TestScheduledJobs:
    @pytest.mark.slow
    def test_enqueue_at_and_in_run_once_on_time(
        self, rq_env: RQEnv, redis_server: RedisServer, start_process: StartProcess, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        daemon = start_schedulerd(start_process, redis_server.url, [QUEUE], *DAEMON_OPTIONS)
        worker = start_worker(rq_env, redis_server.url, [QUEUE])
        # RQ stores whole seconds, so a whole-second due time makes the score exact.
        due_at = float(int(time.time()) + 3)

        job_ids = produce(rq_env, redis_server.url, QUEUE, [
            {"kind": "enqueue_at", "at": due_at, "marker": "aware", "job_id": "aware"},
            {"kind": "enqueue_in", "in_s": 2, "marker": "in", "job_id": "in"},
        ])  # fmt: skip
        # Read each score before the job falls due, because promotion removes it.
        scores = {job_id: client.zscore(SCHEDULED_KEY, job_id) for job_id in job_ids}
        job_ids += produce(
            rq_env, redis_server.url, QUEUE,
            [{"kind": "enqueue_at", "at": due_at, "naive": True, "marker": "shanghai", "job_id": "shanghai"}],
            env={"TZ": "Asia/Shanghai"},
        )  # fmt: skip
        scores["shanghai"] = client.zscore(SCHEDULED_KEY, "shanghai")
        job_ids += produce(
            rq_env, redis_server.url, QUEUE,
            [{"kind": "enqueue_at", "at": due_at, "naive": True, "marker": "berlin", "job_id": "berlin"}],
            env={"TZ": "Europe/Berlin"},
        )  # fmt: skip
        # A score in the past is promoted at once, so the test computes it instead of reading it.
        scores["berlin"] = naive_score_in_berlin(rq_env, due_at)
        berlin_scheduled_at = time.time()
        wait_for_runs(client, 4, RUN_TIMEOUT_S)
        time.sleep(SETTLE_S)

        assert run_counts(client) == {"aware": 1, "in": 1, "shanghai": 1, "berlin": 1}
        assert sorted(ran_ids(client)) == sorted(job_ids)
        assert scores["aware"] == due_at
        assert scores["shanghai"] == due_at
        for marker in ("aware", "in", "shanghai", "berlin"):
            score = scores[marker]
            assert score is not None
            # A job cannot start before the producer has scheduled it, whatever its score.
            promotable_at = max(score, berlin_scheduled_at) if marker == "berlin" else score
            [started_at] = ran_at(client, marker)
            assert started_at >= score, f"{marker} ran {score - started_at:.3f} s before its score"
            assert started_at < promotable_at + MAX_LATENESS_S, (
                f"{marker} ran {started_at - score:.3f} s late"
            )
        # Where RQ converts the naive datetime right, the job runs at the intended instant.
        intended = ["aware", "shanghai"] + (["berlin"] if scores["berlin"] == due_at else [])
        for marker in intended:
            [started_at] = ran_at(client, marker)
            assert started_at >= due_at, f"{marker} ran before the intended instant"
        assert client.zcard(SCHEDULED_KEY) == 0

        # While schedulerd holds the lease, RQ's own tools must still read the queue state.
        info = rq_info(rq_env, redis_server.url)
        assert info.returncode == 0, info.stderr
        assert job_statuses(rq_env, redis_server.url, job_ids) == {job_id: "finished" for job_id in job_ids}
        token = daemon_token(daemon)
        assert client.get(LEASE_KEY) == token.encode()
        if rq_env.version_info >= (2, 10):
            # RQ 2.10+ look the lease value up as a scheduler name in rq:scheduler:<token>.
            expected_pid = daemon.pid
        else:
            # RQ before 2.10 reads the lease value itself as the pid. The token is digits only,
            # so int() succeeds, but the number is the token and not a process id.
            expected_pid = int(token)
        assert scheduler_pids(rq_env, redis_server.url, [QUEUE]) == {QUEUE: expected_pid}
        kill_processes(worker, daemon)

    def test_at_front_job_runs_before_queued_job(
        self, rq_env: RQEnv, redis_server: RedisServer, start_process: StartProcess, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        daemon = start_schedulerd(start_process, redis_server.url, [QUEUE], *DAEMON_OPTIONS)
        due_at = float(int(time.time()) + 3)

        # Ids sort in promotion order, because ids with equal scores come out of the scheduled
        # set in lexical order.
        produce(rq_env, redis_server.url, QUEUE, [
            {"kind": "enqueue", "marker": "queued", "job_id": "queued"},
            {"kind": "enqueue_at", "at": due_at, "marker": "front", "job_id": "a-front", "at_front": True},
            {"kind": "enqueue_at", "at": due_at, "marker": "ttl", "job_id": "b-ttl", "ttl": 100},
        ])  # fmt: skip
        wait_for(lambda: client.llen(QUEUE_KEY) == 3, RUN_TIMEOUT_S, description="3 ids on the queue list")
        ttl_after_promotion_ms = client.pttl("rq:job:b-ttl")

        assert client.lrange(QUEUE_KEY, 0, -1) == [b"a-front", b"queued", b"b-ttl"]
        # The producer set the TTL (RQ 2.12 and 3.0) or none (RQ 1.16) at least 1.5 s before
        # the promotion. More than 99 s left shows the promotion set it again, as RQ does.
        assert 99_000 < ttl_after_promotion_ms <= 100_000
        assert client.ttl("rq:job:a-front") == -1

        worker = start_worker(rq_env, redis_server.url, [QUEUE])
        wait_for_runs(client, 3, RUN_TIMEOUT_S)
        time.sleep(SETTLE_S)

        assert ran_markers(client) == ["front", "queued", "ttl"]
        assert job_statuses(rq_env, redis_server.url, ["a-front", "queued", "b-ttl"]) == {
            "a-front": "finished",
            "queued": "finished",
            "b-ttl": "finished",
        }
        info = rq_info(rq_env, redis_server.url)
        assert info.returncode == 0, info.stderr
        kill_processes(worker, daemon)

    @pytest.mark.slow
    def test_retry_runs_failing_job_three_times(
        self, rq_env: RQEnv, redis_server: RedisServer, start_process: StartProcess, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        daemon = start_schedulerd(start_process, redis_server.url, [QUEUE], *DAEMON_OPTIONS)
        worker = start_worker(rq_env, redis_server.url, [QUEUE])

        # With a retry interval above 0, RQ puts a failed job back into the scheduled set.
        job_ids = produce(rq_env, redis_server.url, QUEUE, [
            {"kind": "enqueue_in", "in_s": 1, "marker": "always-fails", "job_id": "always-fails",
             "func": "fail_times", "fail_n": 99, "retry": [2, 1]},
            {"kind": "enqueue_in", "in_s": 1, "marker": "fails-twice", "job_id": "fails-twice",
             "func": "fail_times", "fail_n": 2, "retry": [2, 1]},
        ])  # fmt: skip
        wait_for_runs(client, 6, RUN_TIMEOUT_S)
        time.sleep(SETTLE_S)
        kill_processes(worker)
        stop_daemon(daemon)

        assert run_counts(client) == {"always-fails": 3, "fails-twice": 3}
        assert client.get(attempts_key("always-fails")) == b"3"
        assert job_statuses(rq_env, redis_server.url, job_ids) == {
            "always-fails": "failed",
            "fails-twice": "finished",
        }
        # Two first runs and four retries, each through the scheduled set and schedulerd.
        assert promoted_count(daemon, QUEUE) == 6
        assert client.zcard(SCHEDULED_KEY) == 0
        info = rq_info(rq_env, redis_server.url)
        assert info.returncode == 0, info.stderr

    @pytest.mark.slow
    def test_repeat_runs_job_three_times(
        self, rq_env: RQEnv, redis_server: RedisServer, start_process: StartProcess, start_worker: StartWorker
    ) -> None:
        if not rq_env.has_repeat:
            pytest.skip(f"rq.Repeat exists from RQ 2.3; this is RQ {rq_env.version}")
        client = redis_server.client()
        daemon = start_schedulerd(start_process, redis_server.url, [QUEUE], *DAEMON_OPTIONS)
        worker = start_worker(rq_env, redis_server.url, [QUEUE])

        [job_id] = produce(rq_env, redis_server.url, QUEUE, [
            {"kind": "enqueue_in", "in_s": 1, "marker": "repeated", "job_id": "repeated", "repeat": [2, 1]},
        ])  # fmt: skip
        wait_for_runs(client, 3, RUN_TIMEOUT_S)
        time.sleep(SETTLE_S)
        kill_processes(worker)
        stop_daemon(daemon)

        assert run_counts(client) == {"repeated": 3}
        assert job_statuses(rq_env, redis_server.url, [job_id]) == {job_id: "finished"}
        # The first run and two repeats, each through the scheduled set and schedulerd.
        assert promoted_count(daemon, QUEUE) == 3
        assert client.zcard(SCHEDULED_KEY) == 0
        info = rq_info(rq_env, redis_server.url)
        assert info.returncode == 0, info.stderr

    @pytest.mark.slow
    def test_rate_limited_jobs_run_one_at_a_time(
        self, rq_env: RQEnv, redis_server: RedisServer, start_process: StartProcess, start_worker: StartWorker
    ) -> None:
        if rq_env.version_info < (3, 0):
            pytest.skip(f"rate limits exist from RQ 3.0; this is RQ {rq_env.version}")
        client = redis_server.client()
        daemon = start_schedulerd(start_process, redis_server.url, [QUEUE], *DAEMON_OPTIONS)
        workers = [start_worker(rq_env, redis_server.url, [QUEUE]) for _ in range(2)]
        due_at = float(int(time.time()) + 2)

        # Concurrency 1: schedulerd hands all three to RQ's limiter, which queues one, and each
        # finished job's worker releases the slot and queues the next.
        job_ids = produce(rq_env, redis_server.url, QUEUE, [
            {"kind": "enqueue_at", "at": due_at, "marker": f"limited-{n}", "job_id": f"limited-{n}",
             "func": "sleep_then_record", "sleep_s": SLOT_HOLD_S, "rate_limit": ["k", 1]}
            for n in range(3)
        ])  # fmt: skip
        wait_for_runs(client, 3, RUN_TIMEOUT_S)
        time.sleep(SETTLE_S)

        assert run_counts(client) == {"limited-0": 1, "limited-1": 1, "limited-2": 1}
        starts = sorted(ran_at(client, f"limited-{n}")[0] for n in range(3))
        for earlier, later in itertools.pairwise(starts):
            # With two workers, overlapping runs would start less than one hold time apart.
            assert later - earlier >= SLOT_HOLD_S, f"runs started {later - earlier:.3f} s apart"
        assert job_statuses(rq_env, redis_server.url, job_ids) == {job_id: "finished" for job_id in job_ids}
        assert client.zcard("rq:rl:k:allowed") == 0
        assert client.zcard("rq:rl:k:rate_limited") == 0
        assert client.zcard(SCHEDULED_KEY) == 0
        kill_processes(*workers, daemon)
