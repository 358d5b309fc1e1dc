"""Faults of the leader process: kill -9 while it drains a backlog, SIGSTOP past its lease TTL.

Each test ends by checking that every job id is on its queue list exactly once.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from schedulerd.keys import Keys
from tests.support.daemon_events import (
    FAST_CONTEST_INTERVAL_S,
    FAST_LEASE_TTL_S,
    FAST_LEASES,
    event_names,
    events,
    wait_for_event,
    wait_ready,
)
from tests.support.processes import ManagedProcess
from tests.support.schedulerd_process import daemon_token, log_events, start_schedulerd
from tests.support.synthetic_jobs import assert_each_promoted_once, schedule, schedule_range, server_now
from tests.support.waiting import wait_for

KEYS = Keys()
QUEUE = "default"
BACKLOG = 50_000
BATCH_SIZE = "200"
# Slack over the lease TTL plus the contest interval for process scheduling on a busy machine.
FAILOVER_SLACK_S = 1.5


def leader_token(client) -> str | None:
    value = client.get(KEYS.lease(QUEUE))
    return None if value is None else value.decode()


def start_daemons(start_process, url: str, count: int, *extra: str) -> dict[str, ManagedProcess]:
    """Start ``count`` daemons on one queue, wait until all are ready, and map each token to its process."""
    by_token = {}
    for number in range(count):
        daemon = start_schedulerd(
            start_process, url, [QUEUE], *FAST_LEASES, "--batch-size", BATCH_SIZE, "--poll-interval", "0.2",
            name=f"schedulerd-{number}",
        )  # fmt: skip
        by_token[daemon_token(daemon)] = daemon
    for daemon in by_token.values():
        wait_ready(daemon)
    return by_token


class TestLeaderKilled:
    @pytest.mark.slow
    @pytest.mark.parametrize("expiry_events", ["", "Ex"], ids=["contest-interval", "expiry-events"])
    def test_kill_9_mid_drain_exactly_once(
        self, redis_server_factory, start_process, record_property, expiry_events
    ):
        kills = 3
        server = redis_server_factory(notify_keyspace_events=expiry_events)
        client = server.client()
        daemons = start_daemons(start_process, server.url, kills + 1)
        first_leader = wait_for(lambda: leader_token(client), 10, description="a leader")
        assert first_leader in daemons

        job_ids = schedule_range(client, QUEUE, "job-", BACKLOG, server_now(client) - 1)
        # A fixed seed, so a failure can be replayed. Each kill lands at a different depth of the drain.
        rng = random.Random(f"kill-9-{expiry_events}")
        thresholds = sorted(rng.sample(range(1_000, BACKLOG - 1_000), kills), reverse=True)
        failovers_s = []
        for threshold in thresholds:
            wait_for(
                lambda threshold=threshold: client.zcard(KEYS.scheduled_set(QUEUE)) <= threshold,
                30,
                interval_s=0.001,
                description=f"the backlog to shrink to {threshold}",
            )
            token = leader_token(client)
            assert token in daemons, f"lease holds {token!r}, no live daemon has that token"
            daemons.pop(token).kill()
            killed_at = time.monotonic()
            wait_for(
                lambda token=token: leader_token(client) not in (None, token),
                FAST_LEASE_TTL_S + FAST_CONTEST_INTERVAL_S + FAILOVER_SLACK_S + 5,
                interval_s=0.005,
                description="a standby to take the lease",
            )
            failovers_s.append(time.monotonic() - killed_at)

        wait_for(lambda: client.zcard(KEYS.scheduled_set(QUEUE)) == 0, 30, description="the backlog to drain")
        record_property("failover_s", [round(value, 3) for value in failovers_s])
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert max(failovers_s) <= FAST_LEASE_TTL_S + FAST_CONTEST_INTERVAL_S + FAILOVER_SLACK_S


class TestLeaderPaused:
    """SIGSTOP the leader past its lease TTL, let a standby take over, then SIGCONT the old leader."""

    @pytest.mark.slow
    @pytest.mark.parametrize("moment", ["idle", "mid-drain"])
    def test_resumed_leader_is_fenced(self, redis_server, start_process, record_property, moment):
        client = redis_server.client()
        old = start_schedulerd(
            start_process, redis_server.url, [QUEUE], *FAST_LEASES, "--batch-size", "100",
            "--log-level", "debug", name="schedulerd-old",
        )  # fmt: skip
        old_token = daemon_token(old)
        wait_for(lambda: leader_token(client) == old_token, 10, description="the first daemon to lead")
        new = start_schedulerd(start_process, redis_server.url, [QUEUE], *FAST_LEASES, name="schedulerd-new")
        new_token = daemon_token(new)
        wait_ready(new)

        # A producer keeps scheduling jobs due at once and up to a second later for the whole test.
        job_ids: list[bytes] = []
        producing = threading.Event()
        producing.set()

        def produce() -> None:
            number = 0
            while producing.is_set():
                number += 1
                delay_s = (number % 5) * 0.2
                job_ids.extend(schedule(client, QUEUE, [f"stream-{number}"], server_now(client) + delay_s))
                time.sleep(0.02)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        try:
            if moment == "mid-drain":
                job_ids.extend(schedule_range(client, QUEUE, "backlog-", 20_000, server_now(client) - 1))
                wait_for(
                    lambda: client.zcard(KEYS.scheduled_set(QUEUE)) < 15_000,
                    10,
                    interval_s=0.001,
                    description="the drain to start",
                )
            else:
                time.sleep(0.5)
            old.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            wait_for(lambda: leader_token(client) == new_token, 10, description="the standby to take over")
            record_property("takeover_after_sigstop_s", round(time.monotonic() - stopped_at, 3))
            listed_at_takeover = client.llen(KEYS.queue_list(QUEUE))
            wait_for(
                lambda: client.llen(KEYS.queue_list(QUEUE)) > listed_at_takeover + 10,
                10,
                description="the new leader to promote",
            )
            old.send_signal(signal.SIGCONT)
            lost = wait_for_event(old, "lease_lost", 10, queue=QUEUE)
            time.sleep(2.0)
        finally:
            producing.clear()
            producer.join(timeout=5)

        wait_for(lambda: client.zcard(KEYS.scheduled_set(QUEUE)) == 0, 15, description="every job promoted")
        record_property("lease_lost_reason", lost["reason"])
        assert_each_promoted_once(client, QUEUE, job_ids)
        assert lost["reason"] in ("taken", "fenced")
        assert leader_token(client) == new_token
        names = event_names(old)
        after_loss = names[names.index("lease_lost") + 1 :]
        assert "promote_call" not in after_loss, "the old leader promoted after it logged lease_lost"
        assert not events(old, "lease_acquired")[1:], "the old leader acquired the lease again"
        assert all(entry.get("event") != "promote_failed" for entry in log_events(old))
