"""Faults of the Redis server and the network: restarts, dropped and stalled connections.

The network faults come from tests.support.proxy, a TCP proxy in front of the redis-server.
Each test ends by checking that every job id is on its queue list exactly once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from schedulerd.connection import SOCKET_TIMEOUT_S
from schedulerd.keys import Keys
from tests.support.daemon_events import FAST_LEASES, event_names, events, wait_for_event, wait_ready
from tests.support.proxy import TcpProxy
from tests.support.schedulerd_process import daemon_token, start_schedulerd
from tests.support.synthetic_jobs import assert_each_promoted_once, schedule, schedule_range, server_now
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    # Only mypy reads it: the annotations are strings at run time (PEP 563).
    from typing_extensions import Self

KEYS = Keys()
QUEUE = "default"


def leader_token(client) -> str | None:
    value = client.get(KEYS.lease(QUEUE))
    return None if value is None else value.decode()


def wait_drained(client, timeout_s: float = 20) -> None:
    wait_for(
        lambda: client.zcard(KEYS.scheduled_set(QUEUE)) == 0, timeout_s, description="every job promoted"
    )


def wait_backlog_below(client, count: int, timeout_s: float = 10) -> None:
    wait_for(
        lambda: client.zcard(KEYS.scheduled_set(QUEUE)) < count,
        timeout_s,
        interval_s=0.001,
        description=f"the backlog to shrink below {count}",
    )


class JobStream:
    """A thread that schedules one job every 20 ms, due at once or up to 0.8 s later, until stopped."""

    def __init__(self, client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.job_ids: list[bytes] = []
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._running.set()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._running.clear()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        number = 0
        while self._running.is_set():
            number += 1
            due_at = server_now(self.client) + (number % 5) * 0.2
            self.job_ids.extend(schedule(self.client, QUEUE, [f"{self.prefix}-{number}"], due_at))
            time.sleep(0.02)


class TestRedisRestart:
    @pytest.mark.slow
    @pytest.mark.parametrize("how", ["sigterm", "sigkill"])
    def test_restart_mid_drain_exactly_once(self, redis_server_factory, start_process, record_property, how):
        server = redis_server_factory(appendonly="yes")
        client = server.client()
        daemon = start_schedulerd(
            start_process, server.url, [QUEUE], *FAST_LEASES, "--batch-size", "100", "--poll-interval", "0.2"
        )
        wait_for(lambda: leader_token(client) == daemon_token(daemon), 10, description="the daemon to lead")
        now = server_now(client)
        job_ids = schedule_range(client, QUEUE, "before-", 20_000, now - 1)
        # Due while the server is down.
        job_ids += schedule(client, QUEUE, [f"during-{number}" for number in range(50)], now + 1.5)
        # AOF is written once per event loop, so let the writes above reach the file first.
        time.sleep(0.1)

        wait_backlog_below(client, 15_000)
        if how == "sigterm":
            server.stop()
        else:
            server.kill()
        wait_for_event(daemon, "redis_unavailable", 10)
        time.sleep(1.5)
        server.restart()
        job_ids += schedule(
            client, QUEUE, [f"after-{number}" for number in range(50)], server_now(client) + 0.5
        )

        recovered = wait_for_event(daemon, "redis_recovered", 15)
        record_property("redis_down_s", recovered["down_s"])
        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids)
        names = event_names(daemon)
        assert names.index("redis_unavailable") < names.index("redis_recovered")
        assert names.count("redis_unavailable") == 1
        assert daemon.is_running()


class TestScriptCacheFlushed:
    def test_flush_mid_drain_reloads_scripts(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_schedulerd(
            start_process,
            redis_server.url,
            [QUEUE],
            *FAST_LEASES,
            "--batch-size",
            "100",
            "--poll-interval",
            "0.2",
        )
        wait_for(lambda: leader_token(client) == daemon_token(daemon), 10, description="the daemon to lead")
        job_ids = schedule_range(client, QUEUE, "job-", 20_000, server_now(client) - 1)
        for threshold in (15_000, 10_000, 5_000):
            wait_backlog_below(client, threshold)
            client.script_flush()

        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert events(daemon, "promote_failed") == []
        assert events(daemon, "redis_unavailable") == []
        assert events(daemon, "lease_lost") == []


@pytest.fixture
def proxy(redis_server) -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", redis_server.port)) as started:
        yield started


class TestDroppedConnections:
    @pytest.mark.slow
    def test_drops_mid_drain_exactly_once(self, redis_server, proxy, start_process):
        client = redis_server.client()
        daemon = start_schedulerd(
            start_process, proxy.url(), [QUEUE], *FAST_LEASES, "--batch-size", "100", "--poll-interval", "0.2"
        )
        wait_for(lambda: leader_token(client) == daemon_token(daemon), 10, description="the daemon to lead")
        job_ids = schedule_range(client, QUEUE, "job-", 20_000, server_now(client) - 1)

        accepted_before = proxy.accepted
        for threshold in (18_000, 14_000, 10_000, 6_000, 2_000):
            wait_backlog_below(client, threshold)
            assert proxy.drop_all() >= 1

        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert proxy.accepted > accepted_before, "the daemon never reconnected"
        # redis-py retried each failed command on a new connection, so the loop saw no error.
        assert events(daemon, "redis_unavailable") == []
        assert leader_token(client) == daemon_token(daemon)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert not events(daemon, "step_down_failed")

    @pytest.mark.slow
    def test_rejected_reconnects_then_recovery(self, redis_server, proxy, start_process):
        client = redis_server.client()
        daemon = start_schedulerd(start_process, proxy.url(), [QUEUE], *FAST_LEASES, "--poll-interval", "0.2")
        wait_for(lambda: leader_token(client) == daemon_token(daemon), 10, description="the daemon to lead")
        job_ids = schedule(
            client, QUEUE, [f"before-{number}" for number in range(100)], server_now(client) - 1
        )
        wait_drained(client)

        proxy.reject_new(True)
        proxy.drop_all()
        job_ids += schedule(
            client, QUEUE, [f"during-{number}" for number in range(100)], server_now(client) - 1
        )
        wait_for_event(daemon, "redis_unavailable", 10)
        time.sleep(1.0)
        assert client.zcard(KEYS.scheduled_set(QUEUE)) == 100
        proxy.reject_new(False)

        wait_for_event(daemon, "redis_recovered", 15)
        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert len(events(daemon, "redis_unavailable")) == 1
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0


class TestStalledConnections:
    """A stall longer than the socket timeout and the lease TTL, with a standby on a direct connection."""

    STALL_S = SOCKET_TIMEOUT_S + 3.0

    def start_pair(self, redis_server, proxy, start_process):
        """Start a leader behind the proxy and a standby connected directly, and return both with a client."""
        client = redis_server.client()
        old = start_schedulerd(
            start_process, proxy.url(), [QUEUE], *FAST_LEASES, "--batch-size", "100",
            "--log-level", "debug", name="schedulerd-proxied",
        )  # fmt: skip
        wait_for(
            lambda: leader_token(client) == daemon_token(old), 10, description="the proxied daemon to lead"
        )
        new = start_schedulerd(
            start_process, redis_server.url, [QUEUE], *FAST_LEASES, name="schedulerd-direct"
        )
        wait_ready(new)
        return client, old, new

    @pytest.mark.slow
    @pytest.mark.parametrize("replies_only", [False, True], ids=["both-directions", "replies-only"])
    def test_stall_past_timeout_exactly_once(
        self, redis_server, proxy, start_process, record_property, replies_only
    ):
        client, old, new = self.start_pair(redis_server, proxy, start_process)
        backlog = schedule_range(client, QUEUE, "backlog-", 20_000, server_now(client) - 1)
        with JobStream(client, "stream") as stream:
            wait_backlog_below(client, 15_000)
            proxy.stall(replies_only=replies_only)
            stalled_at = time.monotonic()
            wait_for(
                lambda: leader_token(client) == daemon_token(new), 10, description="the standby to take over"
            )
            took_over_s = time.monotonic() - stalled_at
            record_property("takeover_after_stall_s", round(took_over_s, 3))
            time.sleep(max(0.0, self.STALL_S - (time.monotonic() - stalled_at)))
            # The old leader's last requests, and with replies_only its retries, reach the server
            # or their replies reach the old leader only now.
            proxy.resume()
            lost = wait_for_event(old, "lease_lost", 15, queue=QUEUE)
            time.sleep(1.0)

        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, backlog + stream.job_ids)
        assert lost["reason"] in ("taken", "fenced")
        assert leader_token(client) == daemon_token(new)
        assert took_over_s < self.STALL_S
        names = event_names(old)
        assert "promote_call" not in names[names.index("lease_lost") + 1 :]
        assert old.is_running()
        old.send_signal(signal.SIGTERM)
        assert old.wait(10) == 0

    @pytest.mark.slow
    def test_lost_release_reply_still_wakes_standby(self, redis_server, proxy, start_process):
        client = redis_server.client()
        old = start_schedulerd(start_process, proxy.url(), [QUEUE], *FAST_LEASES, name="schedulerd-proxied")
        wait_for(
            lambda: leader_token(client) == daemon_token(old), 10, description="the proxied daemon to lead"
        )
        # The contest interval is long, so only the handoff message can wake this standby in time.
        new = start_schedulerd(
            start_process, redis_server.url, [QUEUE], "--lease-ttl", "2", "--renew-interval", "0.5",
            "--contest-interval", "60", name="schedulerd-direct",
        )  # fmt: skip
        wait_ready(new)

        proxy.stall(replies_only=True)
        old.send_signal(signal.SIGTERM)
        wait_for(lambda: leader_token(client) is None, 10, interval_s=0.005, description="the release to run")
        # The first reply times out. The retry reconnects, and its handshake waits for the resume.
        time.sleep(SOCKET_TIMEOUT_S + 0.5)
        proxy.resume()
        assert old.wait(15) == 0

        wait_for(lambda: leader_token(client) == daemon_token(new), 3, description="the standby to take over")


class TestUnsafeServers:
    def test_cluster_exits_2_naming_cluster(self, redis_server_factory, start_process):
        server = redis_server_factory(cluster_enabled="yes")
        client = server.client()
        client.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        wait_for(
            lambda: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"),
            10,
            description="the one-node cluster to serve every slot",
        )
        daemon = start_schedulerd(start_process, server.url, [QUEUE])

        assert daemon.wait(15) == 2
        unsupported = events(daemon, "redis_unsupported")
        assert len(unsupported) == 1
        assert unsupported[0]["level"] == "critical"
        assert "Cluster" in unsupported[0]["error"]
        assert client.exists(KEYS.lease(QUEUE)) == 0

    @pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
    def test_evicting_policy_warns_at_start(self, redis_server_factory, start_process, policy):
        server = redis_server_factory(maxmemory_policy=policy)
        client = server.client()
        daemon = start_schedulerd(start_process, server.url, [QUEUE])
        warning = wait_for_event(daemon, "eviction_policy_unsafe", 10)
        job_ids = schedule(client, QUEUE, ["job"], server_now(client) - 1)

        wait_drained(client)
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert warning["maxmemory_policy"] == policy
        assert warning["level"] == "warning"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert len(events(daemon, "eviction_policy_unsafe")) == 1


class TestMissedExpiryEvent:
    CONTEST_INTERVAL_S = 5.0

    @pytest.mark.slow
    def test_offline_standby_waits_for_contest(self, redis_server_factory, start_process, record_property):
        server = redis_server_factory(notify_keyspace_events="Ex")
        client = server.client()
        leader = start_schedulerd(start_process, server.url, [QUEUE], *FAST_LEASES, name="schedulerd-leader")
        leader_lease = daemon_token(leader)
        wait_for(lambda: leader_token(client) == leader_lease, 10, description="the leader to lead")
        with TcpProxy(("127.0.0.1", server.port)) as proxy:
            standby = start_schedulerd(
                start_process, proxy.url(), [QUEUE], "--lease-ttl", "2", "--renew-interval", "0.5",
                "--contest-interval", str(self.CONTEST_INTERVAL_S), name="schedulerd-standby",
            )  # fmt: skip
            wait_ready(standby)
            time.sleep(0.5)

            # The standby is cut off, so it misses the expiry event of the crashed leader's lease.
            proxy.reject_new(True)
            proxy.drop_all()
            leader.kill()
            wait_for(
                lambda: leader_token(client) is None, 5, interval_s=0.005, description="the lease to expire"
            )
            expired_at = time.monotonic()
            time.sleep(0.5)
            proxy.reject_new(False)
            wait_for(
                lambda: leader_token(client) == daemon_token(standby),
                self.CONTEST_INTERVAL_S + 10,
                description="the standby to take over at a contest",
            )
            leaderless_s = time.monotonic() - expired_at
            record_property("leaderless_after_missed_event_s", round(leaderless_s, 3))
            standby.send_signal(signal.SIGTERM)
            assert standby.wait(10) == 0

        # No event woke the standby: it took over at its next contest, up to one interval plus the
        # reconnect backoff after the expiry.
        assert leaderless_s > 0.5
        assert leaderless_s <= self.CONTEST_INTERVAL_S + 5.0
