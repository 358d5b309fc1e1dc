"""`schedulerd status` against a real redis-server, with and without a running daemon."""

from __future__ import annotations

import json
import signal
import socket

from schedulerd.keys import Keys
from schedulerd.status import (
    LEADER_NONE,
    LEADER_RQ,
    LEADER_SCHEDULERD,
    Leader,
    QueueCounts,
    QueueStatus,
    find_problems,
    read_status,
)
from tests.support.redis_server import pick_free_port
from tests.support.waiting import wait_for
from tests.test_cli import KEYS, run_command, schedule, server_now, start_daemon


def status_json(url: str, *extra: str) -> tuple[int, dict]:
    result = run_command("status", "--json", "--redis-url", url, *extra)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


class TestStatusCommand:
    def test_without_daemon_reports_no_leader_and_overdue(self, redis_server):
        client = redis_server.client()
        now = server_now(client)
        schedule(client, "late", now - 120)
        schedule(client, "soon", now + 30)

        code, document = status_json(redis_server.url, "--queues", "default")
        assert code == 1
        queue = document["queues"][0]
        assert queue["leader"]["kind"] == "none"
        assert queue["lease_ttl_left_s"] is None
        assert queue["scheduled"] == 2
        assert queue["due"] == 1
        assert 119 <= queue["oldest_overdue_s"] < 130
        assert 0 < queue["next_due_in_s"] <= 30
        assert document["problems"][0] == "queue default: no scheduler holds the lease"
        assert "overdue by" in document["problems"][1]

    def test_with_daemon_reports_leader_and_exits_0(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url, "--queues", "default,high")
        wait_for(lambda: client.exists(KEYS.lease("default"), KEYS.lease("high")) == 2, 10)
        token = client.get(KEYS.lease("default")).decode()
        wait_for(lambda: client.exists(KEYS.scheduler_info(token)), 10)

        code, document = status_json(redis_server.url, "--queues", "default,high")
        assert code == 0
        leader = document["queues"][0]["leader"]
        assert leader["kind"] == "schedulerd"
        assert leader["value"] == token
        assert leader["pid"] == daemon.pid
        assert leader["hostname"] == socket.gethostname()
        assert 0 < document["queues"][0]["lease_ttl_left_s"] <= 10

        table = run_command("status", "--queues", "default,high", "--redis-url", redis_server.url)
        assert table.returncode == 0
        header, first, second = table.stdout.splitlines()
        assert header.split()[:2] == ["QUEUE", "LEADER"]
        assert first.startswith("default")
        assert f"schedulerd {token} on {socket.gethostname()} pid {daemon.pid}" in first
        assert second.startswith("high")

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        code, document = status_json(redis_server.url, "--queues", "default,high")
        assert code == 1
        assert document["queues"][0]["leader"]["kind"] == "none"

    def test_max_overdue_threshold(self, redis_server):
        client = redis_server.client()
        client.set(KEYS.lease("default"), "4242", px=60_000)
        schedule(client, "late", server_now(client) - 30)
        assert status_json(redis_server.url, "--queues", "default", "--max-overdue", "60")[0] == 0
        assert status_json(redis_server.url, "--queues", "default", "--max-overdue", "10")[0] == 1

    def test_pattern_lists_matching_queues(self, redis_server):
        client = redis_server.client()
        for queue in ("reports-b", "reports-a", "emails"):
            schedule(client, f"{queue}-job", server_now(client) + 60, queue=queue)
        code, document = status_json(redis_server.url, "--queues", "reports-*")
        assert code == 1
        assert [queue["queue"] for queue in document["queues"]] == ["reports-a", "reports-b"]

    def test_unreachable_redis_exits_1(self):
        url = f"redis://127.0.0.1:{pick_free_port()}/0"
        result = run_command("status", "--queues", "default", "--redis-url", url)
        assert result.returncode == 1
        assert "cannot read status from Redis" in result.stderr

    def test_configuration_error_exits_2(self):
        result = run_command("status", "--queues", "default", "--redis-url", "http://example.invalid")
        assert result.returncode == 2
        assert "configuration error" in result.stderr

    def test_negative_max_overdue_exits_2(self):
        result = run_command("status", "--queues", "default", "--max-overdue", "-1")
        assert result.returncode == 2


class TestLeaderKinds:
    def test_rq_before_2_10_pid(self, redis_server):
        client = redis_server.client()
        client.set(KEYS.lease("default"), "31337", px=60_000)
        leader = read_status(client, Keys(), ["default"])[0].leader
        assert (leader.kind, leader.pid) == (LEADER_RQ, 31337)
        assert leader.describe() == "rq built-in scheduler (31337) on ? pid 31337"

    def test_rq_2_10_name_with_info_hash(self, redis_server):
        client = redis_server.client()
        name = "4f1c2b9e8d7a6f5e4d3c2b1a0f9e8d7c"
        client.set(KEYS.lease("default"), name, px=60_000)
        client.hset(KEYS.scheduler_info(name), mapping={"name": name, "hostname": "worker-1", "pid": "77"})
        leader = read_status(client, Keys(), ["default"])[0].leader
        assert leader.kind == LEADER_RQ
        assert leader.describe() == f"rq built-in scheduler ({name}) on worker-1 pid 77"

    def test_digits_with_info_hash_is_schedulerd(self, redis_server):
        client = redis_server.client()
        client.set(KEYS.lease("default"), "123456789", px=60_000)
        client.hset(KEYS.scheduler_info("123456789"), mapping={"hostname": "host-a", "pid": "9"})
        leader = read_status(client, Keys(), ["default"])[0].leader
        assert (leader.kind, leader.hostname, leader.pid) == (LEADER_SCHEDULERD, "host-a", 9)

    def test_lease_without_expiry(self, redis_server):
        client = redis_server.client()
        client.set(KEYS.lease("default"), "31337")
        status = read_status(client, Keys(), ["default"])[0]
        assert status.lease_ttl_left_s is None

    def test_key_prefix_respected(self, redis_server):
        client = redis_server.client()
        keys = Keys("myapp")
        client.zadd(keys.scheduled_set("default"), {"j": server_now(client) + 60})
        status = read_status(client, keys, ["default"])[0]
        assert status.counts.scheduled == 1
        assert status.leader.kind == LEADER_NONE


class TestProblems:
    def status(self, overdue_s: float | None, kind: str = LEADER_SCHEDULERD) -> QueueStatus:
        counts = QueueCounts(scheduled=1, due=0 if overdue_s is None else 1, oldest_overdue_s=overdue_s,
                             next_due_in_s=None)
        return QueueStatus("default", Leader(kind, "1"), 5.0, counts)

    def test_overdue_equal_to_limit_is_fine(self):
        assert find_problems([self.status(60.0)], 60.0) == []

    def test_overdue_past_limit(self):
        assert len(find_problems([self.status(60.001)], 60.0)) == 1

    def test_rq_leader_counts_as_leader(self):
        assert find_problems([self.status(None, kind=LEADER_RQ)], 60.0) == []
