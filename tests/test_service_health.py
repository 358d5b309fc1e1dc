"""The HTTP listener of a real `schedulerd run` process: /healthz, /readyz and /metrics."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schedulerd.health import MIN_STALE_AFTER_S, REDIS_PROBE_TIMEOUT_S, LoopHealth
from tests.support.waiting import wait_for
from tests.test_cli import KEYS, log_events, schedule, server_now, start_daemon

FAST = ("--poll-interval", "0.1", "--http-address", "127.0.0.1:0")


def get(port: int, path: str) -> tuple[int, str, str]:
    """Return (status, content type, body) of a GET, including error statuses."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def listening_port(process) -> int:
    event = wait_for(lambda: next((e for e in log_events(process) if e["event"] == "http_listening"), None), 10)
    return int(event["port"])


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape /metrics into {(sample name, sorted labels): value}."""
    status, _, body = get(port, "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(port: int, name: str, **labels: str) -> float | None:
    return samples(port).get((name, tuple(sorted(labels.items()))))


class TestEndpoints:
    def test_health_ready_and_metrics(self, redis_server, start_process):
        client = redis_server.client()
        # Another scheduler has the lease of queue "other", so its due job stays and shows as overdue.
        client.set(KEYS.lease("other"), "12345", px=60_000)
        now = server_now(client)
        schedule(client, "late", now - 30, queue="other")
        schedule(client, "later", now + 3600, queue="other")
        daemon = start_daemon(start_process, redis_server.url, "--queues", "default,other", *FAST)
        port = listening_port(daemon)

        wait_for(lambda: get(port, "/readyz")[0] == 200, 10)
        status, content_type, body = get(port, "/readyz")
        assert content_type == "application/json"
        assert json.loads(body) == {"status": "ready", "leading": ["default"]}
        status, _, body = get(port, "/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"

        schedule(client, "j1", server_now(client) - 0.5)
        wait_for(lambda: value(port, "schedulerd_jobs_promoted_total", queue="default") == 1.0, 10)
        metrics = samples(port)
        assert metrics[("schedulerd_lease_held", (("queue", "default"),))] == 1.0
        assert metrics[("schedulerd_lease_held", (("queue", "other"),))] == 0.0
        assert metrics[("schedulerd_lease_events_total", (("event", "acquired"), ("queue", "default")))] == 1.0
        assert metrics[("schedulerd_scheduled_jobs", (("queue", "other"),))] == 2.0
        assert metrics[("schedulerd_due_jobs", (("queue", "other"),))] == 1.0
        assert metrics[("schedulerd_due_jobs", (("queue", "default"),))] == 0.0
        assert metrics[("schedulerd_oldest_overdue_seconds", (("queue", "other"),))] >= 30.0
        assert metrics[("schedulerd_redis_up", ())] == 1.0
        assert metrics[("schedulerd_redis_errors_total", ())] == 0.0
        assert metrics[("schedulerd_promotion_lateness_seconds_count", ())] == 1.0
        assert metrics[("schedulerd_promotion_lateness_seconds_bucket", (("le", "0.001"),))] == 0.0
        assert metrics[("schedulerd_promote_call_duration_seconds_count", ())] >= 1.0

        assert get(port, "/nothing")[0] == 404
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0

    def test_redis_outage_fails_health_and_readiness(self, redis_server, start_process):
        daemon = start_daemon(start_process, redis_server.url, "--queues", "default", *FAST)
        port = listening_port(daemon)
        wait_for(lambda: get(port, "/healthz")[0] == 200, 10)

        redis_server.stop()
        status, _, body = wait_for(lambda: (reply := get(port, "/healthz"))[0] == 503 and reply, 10)
        assert json.loads(body)["reason"] == "the last loop iteration failed on a Redis error"
        status, _, body = get(port, "/readyz")
        assert status == 503
        assert json.loads(body)["reason"] == "Redis is unreachable"
        assert value(port, "schedulerd_redis_up") == 0.0
        assert value(port, "schedulerd_redis_errors_total") >= 1.0

        redis_server.restart()
        wait_for(lambda: get(port, "/healthz")[0] == 200, 10)
        assert get(port, "/readyz")[0] == 200
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0

    def test_scrape_gives_up_on_stalled_redis(self, redis_server, start_process):
        daemon = start_daemon(start_process, redis_server.url, "--queues", "default", *FAST)
        port = listening_port(daemon)
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10)

        stall_s = 2.5
        blocker = threading.Thread(target=redis_server.client().execute_command, args=("DEBUG", "SLEEP", stall_s))
        blocker.start()
        time.sleep(0.2)
        started = time.monotonic()
        redis_up = value(port, "schedulerd_redis_up")
        scrape_s = time.monotonic() - started
        blocker.join()
        assert redis_up == 0.0
        # The scrape returned on its own timeout, well before the stalled server would have replied.
        assert REDIS_PROBE_TIMEOUT_S <= scrape_s + 0.2
        assert scrape_s < stall_s - 0.5
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0

    def test_quarantined_and_dropped_counted(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url, "--queues", "default", *FAST)
        port = listening_port(daemon)
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10)

        client.hset(KEYS.job_hash("no-data"), "status", "scheduled")
        client.zadd(KEYS.scheduled_set("default"), {"no-hash": server_now(client) - 1, "no-data": server_now(client) - 1})
        wait_for(lambda: value(port, "schedulerd_jobs_dropped_total", queue="default") == 1.0, 10)
        assert value(port, "schedulerd_jobs_quarantined_total", queue="default", reason="no_data") == 1.0
        assert value(port, "schedulerd_jobs_promoted_total", queue="default") == 0.0
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0


class TestLoopHealth:
    class Clock:
        def __init__(self) -> None:
            self.now = 1000.0

        def __call__(self) -> float:
            return self.now

    def test_unhealthy_before_first_iteration(self):
        healthy, details = LoopHealth(1.0, clock=self.Clock()).check()
        assert not healthy
        assert details["reason"] == "no loop iteration has finished yet"

    @pytest.mark.parametrize(("poll_interval_s", "limit_s"), [(0.1, MIN_STALE_AFTER_S), (1.0, 10.0), (5.0, 15.0)])
    def test_stale_limit(self, poll_interval_s, limit_s):
        clock = self.Clock()
        health = LoopHealth(poll_interval_s, clock=clock)
        health.iteration_finished(None)
        clock.now += limit_s
        assert health.check()[0]
        clock.now += 0.01
        healthy, details = health.check()
        assert not healthy
        assert details["limit_s"] == limit_s

    def test_good_iteration_clears_error(self):
        health = LoopHealth(1.0, clock=self.Clock())
        health.redis_failed(None, ConnectionError("refused"))
        assert health.check() == (False, {"reason": "the last loop iteration failed on a Redis error", "error": "refused"})
        health.iteration_finished(None)
        assert health.check()[0]
