"""Checks of the test harness itself: Redis servers, RQ environments, producer, workers, jobs.

The worker tests run RQ's own scheduler (`rq worker --with-scheduler`), without schedulerd, to
prove that producer, worker and job functions work together for every RQ release under test.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.fixture_types import RedisServerFactory, StartWorker
from tests.support.processes import ProcessTracker
from tests.support.redis_server import RedisServer
from tests.support.rq_jobs import RAN_IDS_KEY, RAN_KEY, attempts_key, ran_at_key
from tests.support.rq_processes import ProducerError, produce
from tests.support.rqenvs import RQEnv
from tests.support.waiting import WaitTimeout, wait_for

QUEUE = "default"
SCHEDULED_KEY = f"rq:scheduled:{QUEUE}"
QUEUE_KEY = f"rq:queue:{QUEUE}"


IGNORE_SIGTERM_SCRIPT = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(60)
"""

# Prints its child's pid and exits at once, leaving the child orphaned in the process group.
ORPHAN_CHILD_SCRIPT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
"""


def config_value(client: redis.Redis, name: str) -> str:
    # redis-py 8 decodes CONFIG GET replies even without decode_responses; older releases do not.
    [value] = client.config_get(name).values()
    return value.decode() if isinstance(value, bytes) else str(value)


def ran_markers(client: redis.Redis) -> list[str]:
    markers: list[bytes | str] = client.lrange(RAN_KEY, 0, -1)
    return [marker.decode() if isinstance(marker, bytes) else marker for marker in markers]


class TestRedisServer:
    def test_tcp_and_unix_socket_reach_same_server(self, redis_server: RedisServer) -> None:
        redis_server.client().set("probe", b"tcp")

        unix_client = redis.Redis.from_url(redis_server.unix_url)
        try:
            assert unix_client.get("probe") == b"tcp"
        finally:
            unix_client.close()

    def test_url_uses_loopback_and_picked_port(self, redis_server: RedisServer) -> None:
        client = redis.Redis.from_url(redis_server.url)
        try:
            assert client.ping()
        finally:
            client.close()
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"

    def test_server_binds_loopback_only(self, redis_server: RedisServer) -> None:
        assert config_value(redis_server.client(), "bind") == "127.0.0.1"

    def test_default_config_disables_persistence(self, redis_server: RedisServer) -> None:
        client = redis_server.client()
        assert config_value(client, "appendonly") == "no"
        assert config_value(client, "save") == ""

    def test_version_matches_info(self, redis_server: RedisServer) -> None:
        info = redis_server.client().info("server")
        assert info["redis_version"] == redis_server.version

    def test_pid_matches_info(self, redis_server: RedisServer) -> None:
        info = redis_server.client().info("server")
        assert info["process_id"] == redis_server.pid

    def test_restart_after_stop_keeps_aof_data(self, redis_server_factory: RedisServerFactory) -> None:
        server = redis_server_factory(appendonly="yes")
        port = server.port
        server.client().set("kept", b"1")

        server.stop()
        server.restart()

        assert server.port == port
        assert server.client().get("kept") == b"1"

    def test_restart_after_kill_keeps_fsynced_aof_data(
        self, redis_server_factory: RedisServerFactory
    ) -> None:
        server = redis_server_factory(appendonly="yes", appendfsync="always")
        server.client().set("kept", b"1")
        old_pid = server.pid

        server.kill()
        server.restart()

        assert server.pid != old_pid
        assert server.client().get("kept") == b"1"

    def test_restart_without_persistence_loses_data(self, redis_server: RedisServer) -> None:
        redis_server.client().set("lost", b"1")

        redis_server.stop()
        redis_server.restart()

        assert redis_server.client().get("lost") is None

    def test_client_sends_configured_password(self, redis_server_factory: RedisServerFactory) -> None:
        server = redis_server_factory(requirepass="test-secret")

        assert server.client().ping()
        # redis-py 8 retries a failed AUTH for about 3 s by default, so this client does not retry.
        no_retry = Retry(NoBackoff(), retries=0)
        with pytest.raises(redis.exceptions.AuthenticationError):
            server.client(password=None, retry=no_retry).ping()

    def test_factory_starts_independent_servers(self, redis_server_factory: RedisServerFactory) -> None:
        first = redis_server_factory()
        second = redis_server_factory()
        first.client().set("only-first", b"1")

        assert first.port != second.port
        assert second.client().get("only-first") is None


class TestProcessTracker:
    def test_stop_all_kills_process_ignoring_sigterm(self, tmp_path: Path) -> None:
        tracker = ProcessTracker(tmp_path)
        stubborn = tracker.start([sys.executable, "-c", IGNORE_SIGTERM_SCRIPT])
        wait_for(lambda: "up" in stubborn.read_log(), timeout_s=10)

        started = time.monotonic()
        tracker.stop_all(timeout_s=0.5)

        assert not stubborn.is_running()
        assert time.monotonic() - started < 5

    def test_stop_all_kills_orphaned_child(self, tmp_path: Path) -> None:
        tracker = ProcessTracker(tmp_path)
        parent = tracker.start([sys.executable, "-c", ORPHAN_CHILD_SCRIPT])
        parent.wait(timeout_s=10)
        child_pid = int(parent.read_log().split()[0])

        tracker.stop_all(timeout_s=0.5)

        # SIGKILL is delivered asynchronously, so allow a moment for the child to die.
        wait_for(lambda: _is_dead(child_pid), timeout_s=5)


def _is_dead(pid: int) -> bool:
    """Whether `pid` is gone or a zombie waiting for its new parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state == "Z"


class TestRQEnvironment:
    def test_version_matches_label(self, rq_env: RQEnv) -> None:
        assert rq_env.version.startswith(rq_env.label + ".")

    def test_executables_exist(self, rq_env: RQEnv) -> None:
        assert rq_env.python.is_file()
        assert rq_env.rq.is_file()


class TestProducer:
    def test_enqueue_in_lands_in_scheduled_set(self, rq_env: RQEnv, redis_server: RedisServer) -> None:
        client = redis_server.client()
        before = time.time()

        job_ids = produce(
            rq_env, redis_server.url, QUEUE, [{"kind": "enqueue_in", "in_s": 60, "marker": "later"}]
        )

        assert len(job_ids) == 1
        score = client.zscore(SCHEDULED_KEY, job_ids[0])
        assert score is not None
        # RQ stores whole seconds, truncated.
        assert int(before) + 59 <= score <= time.time() + 60
        assert client.llen(QUEUE_KEY) == 0
        assert client.exists(f"rq:job:{job_ids[0]}") == 1

    def test_naive_and_aware_enqueue_at_get_same_score(
        self, rq_env: RQEnv, redis_server: RedisServer
    ) -> None:
        due_at = float(int(time.time()) + 120)
        spec = [
            {"kind": "enqueue_at", "at": due_at, "marker": "aware", "job_id": "aware"},
            {"kind": "enqueue_at", "at": due_at, "naive": True, "marker": "naive", "job_id": "naive"},
        ]

        # In a zone far from UTC, a naive datetime misread as UTC would score hours off.
        produce(rq_env, redis_server.url, QUEUE, spec, env={"TZ": "Asia/Kolkata"})

        client = redis_server.client()
        assert client.zscore(SCHEDULED_KEY, "aware") == due_at
        assert client.zscore(SCHEDULED_KEY, "naive") == due_at

    def test_job_options_reach_job_hash(self, rq_env: RQEnv, redis_server: RedisServer) -> None:
        spec = [
            {
                "kind": "enqueue_in",
                "in_s": 60,
                "marker": "options",
                "job_id": "with-options",
                "at_front": True,
                "ttl": 600,
                "retry": [3, 5],
                "func": "fail_times",
                "fail_n": 2,
            }
        ]

        job_ids = produce(rq_env, redis_server.url, QUEUE, spec)

        assert job_ids == ["with-options"]
        job_hash = redis_server.client().hgetall("rq:job:with-options")
        assert job_hash[b"enqueue_at_front"] == b"1"
        assert job_hash[b"retries_left"] == b"3"
        assert job_hash[b"status"] == b"scheduled"

    def test_repeat_matches_rq_support(self, rq_env: RQEnv, redis_server: RedisServer) -> None:
        spec = [{"kind": "enqueue_in", "in_s": 60, "marker": "repeat", "repeat": [2, 1]}]

        if rq_env.has_repeat:
            assert len(produce(rq_env, redis_server.url, QUEUE, spec)) == 1
        else:
            with pytest.raises(ProducerError, match="RQ 2.3"):
                produce(rq_env, redis_server.url, QUEUE, spec)

    def test_invalid_spec_creates_no_job(self, rq_env: RQEnv, redis_server: RedisServer) -> None:
        spec: list[dict[str, Any]] = [
            {"kind": "enqueue_in", "in_s": 60, "marker": "valid"},
            {"kind": "enqueue_in", "marker": "missing-in_s"},
        ]

        with pytest.raises(ProducerError, match="in_s"):
            produce(rq_env, redis_server.url, QUEUE, spec)

        assert redis_server.client().dbsize() == 0


class TestWorker:
    def test_rq_scheduler_runs_job_due_in_one_second(
        self, rq_env: RQEnv, redis_server: RedisServer, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        start_worker(rq_env, redis_server.url, [QUEUE], with_scheduler=True)

        [job_id] = produce(
            rq_env, redis_server.url, QUEUE, [{"kind": "enqueue_in", "in_s": 1, "marker": "due-soon"}]
        )
        score = client.zscore(SCHEDULED_KEY, job_id)
        wait_for(lambda: ran_markers(client), timeout_s=15)

        assert ran_markers(client) == ["due-soon"]
        assert client.lrange(RAN_IDS_KEY, 0, -1) == [job_id.encode()]
        ran_at = float(client.lindex(ran_at_key("due-soon"), 0) or 0)
        assert score is not None
        assert ran_at >= score
        assert client.zcard(SCHEDULED_KEY) == 0

    def test_worker_without_scheduler_leaves_due_job(
        self, rq_env: RQEnv, redis_server: RedisServer, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        start_worker(rq_env, redis_server.url, [QUEUE])
        past_due_at = time.time() - 5

        [job_id] = produce(
            rq_env, redis_server.url, QUEUE, [{"kind": "enqueue_at", "at": past_due_at, "marker": "stuck"}]
        )

        # RQ's scheduler polls every second, so 1.5 s without a run shows that none is active.
        with pytest.raises(WaitTimeout):
            wait_for(lambda: ran_markers(client), timeout_s=1.5)
        assert client.zscore(SCHEDULED_KEY, job_id) is not None

    def test_fail_times_fails_then_succeeds_on_retry(
        self, rq_env: RQEnv, redis_server: RedisServer, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        start_worker(rq_env, redis_server.url, [QUEUE])
        # Retry interval 0 re-enqueues at once, so no scheduler is involved.
        spec = [{"kind": "enqueue", "marker": "flaky", "func": "fail_times", "fail_n": 1, "retry": [1, 0]}]

        [job_id] = produce(rq_env, redis_server.url, QUEUE, spec)
        wait_for(lambda: client.hget(f"rq:job:{job_id}", "status") == b"finished", timeout_s=15)

        assert ran_markers(client) == ["flaky", "flaky"]
        assert client.get(attempts_key("flaky")) == b"2"
