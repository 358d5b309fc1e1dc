"""Redis Sentinel with a primary, one replica and three sentinels: kill -9 the primary, follow the failover."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from schedulerd.keys import Keys
from tests.support.daemon_events import FAST_LEASES, event_names, events, wait_for_event
from tests.support.processes import ManagedProcess
from tests.support.redis_server import RedisServer, pick_free_port
from tests.support.schedulerd_process import daemon_token, start_schedulerd
from tests.support.synthetic_jobs import assert_each_promoted_once, schedule, server_now
from tests.support.waiting import wait_for

KEYS = Keys()
QUEUE = "default"
SERVICE = "mymaster"
SENTINELS = 3
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def sentinel_config(port: int, directory: Path, primary_port: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            f'dir "{directory}"',
            'logfile ""',
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            "",
        ]
    )


def start_sentinel(
    start_process, binary: Path, directory: Path, primary_port: int
) -> tuple[ManagedProcess, int]:
    """Start one sentinel on a free port, retrying on a new port when another process took it first."""
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = pick_free_port()
        config = directory / "sentinel.conf"
        config.write_text(sentinel_config(port, directory, primary_port))
        process = start_process(
            [binary, config, "--sentinel"], cwd=directory, name=f"sentinel-{directory.name}"
        )
        probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process.is_running():
                try:
                    if probe.ping():
                        return process, port
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            probe.close()
        if process.is_running():
            raise AssertionError(f"sentinel on port {port} did not answer:\n{process.read_log()}")
    raise AssertionError("no sentinel could bind a free port in 5 attempts")


class SentinelSetup:
    def __init__(self, primary: RedisServer, replica: RedisServer, sentinel_ports: list[int]) -> None:
        self.primary = primary
        self.replica = replica
        self.sentinel_ports = sentinel_ports

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def primary_port_per_sentinels(self) -> set[int]:
        """Return the primary port each reachable sentinel reports."""
        ports = set()
        for port in self.sentinel_ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
            try:
                address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                ports.add(int(address[1]))
            except redis.RedisError:
                continue
            finally:
                client.close()
        return ports


@pytest.fixture
def sentinel_setup(redis_server_factory, start_process, tmp_path) -> SentinelSetup:
    primary = redis_server_factory()
    replica = redis_server_factory()
    replica.client().replicaof("127.0.0.1", primary.port)
    wait_for(
        lambda: replica.client().info("replication").get("master_link_status") == "up",
        10,
        description="the replica to sync",
    )
    ports = [
        start_sentinel(start_process, primary.binary, tmp_path / f"sentinel-{number}", primary.port)[1]
        for number in range(SENTINELS)
    ]

    def discovered_everything() -> bool:
        # Every sentinel must know the replica and the other sentinels before it can fail over.
        for port in ports:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, decode_responses=True)
            try:
                state = client.execute_command("SENTINEL", "MASTER", SERVICE)
            finally:
                client.close()
            fields = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
            if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < SENTINELS - 1:
                return False
        return True

    wait_for(
        discovered_everything,
        20,
        interval_s=0.1,
        description="the sentinels to find the replica and each other",
    )
    return SentinelSetup(primary, replica, ports)


def start_sentinel_daemon(start_process, url: str, *extra: str) -> ManagedProcess:
    return start_schedulerd(start_process, url, [QUEUE], *extra, name="schedulerd-sentinel")


class TestSentinelFailover:
    def test_unavailable_line_names_sentinel_service(self, start_process):
        ports = [pick_free_port() for _ in range(2)]
        url = f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/{SERVICE}"
        daemon = start_sentinel_daemon(start_process, url)
        unavailable = wait_for_event(daemon, "redis_unavailable", 15)
        assert SERVICE in unavailable["redis"]
        assert "None" not in unavailable["redis"]

    @pytest.mark.slow
    def test_follows_failover_after_kill_9(self, sentinel_setup, start_process, record_property):
        setup = sentinel_setup
        primary = setup.primary.client()
        daemon = start_sentinel_daemon(start_process, setup.url, *FAST_LEASES, "--poll-interval", "0.2")
        token = daemon_token(daemon).encode()
        wait_for(
            lambda: primary.get(KEYS.lease(QUEUE)) == token,
            15,
            description="the daemon to lead on the primary",
        )

        now = server_now(primary)
        job_ids = schedule(primary, QUEUE, [f"before-{number}" for number in range(100)], now - 1)
        # Due during the failover.
        job_ids += schedule(primary, QUEUE, [f"during-{number}" for number in range(100)], now + 1.0)
        wait_for(
            lambda: primary.llen(KEYS.queue_list(QUEUE)) == 100, 10, description="the first jobs promoted"
        )
        # Only what reached the replica survives the failover, so make sure everything did.
        assert primary.wait(1, 5000) == 1

        setup.primary.kill()
        killed_at = time.monotonic()
        wait_for_event(daemon, "redis_unavailable", 10)
        wait_for(
            lambda: setup.primary_port_per_sentinels() == {setup.replica.port},
            30,
            interval_s=0.05,
            description="the sentinels to promote the replica",
        )
        promoted_s = time.monotonic() - killed_at
        new_primary = setup.replica.client()
        wait_for_event(daemon, "redis_recovered", 20)
        recovered_s = time.monotonic() - killed_at

        job_ids += schedule(
            new_primary, QUEUE, [f"after-{number}" for number in range(100)], server_now(new_primary)
        )
        wait_for(
            lambda: new_primary.zcard(KEYS.scheduled_set(QUEUE)) == 0,
            15,
            description="every job promoted on the new primary",
        )
        first_promotion_s = time.monotonic() - killed_at
        record_property("sentinel_promoted_replica_s", round(promoted_s, 3))
        record_property("daemon_recovered_s", round(recovered_s, 3))
        record_property("all_promoted_s", round(first_promotion_s, 3))

        assert_each_promoted_once(new_primary, QUEUE, job_ids)
        assert new_primary.get(KEYS.lease(QUEUE)) == token
        names = event_names(daemon)
        assert names.index("redis_unavailable") < names.index("redis_recovered")
        assert len(events(daemon, "redis_unavailable")) == 1
        assert daemon.is_running()


class TestMinReplicasToWrite:
    """min-replicas-to-write, the Redis setting that narrows the window of lost promotions."""

    @pytest.mark.slow
    def test_primary_without_replica_promotes_nothing(self, redis_server_factory, start_process):
        primary_server = redis_server_factory(min_replicas_to_write=1, min_replicas_max_lag=1)
        replica_server = redis_server_factory()
        replica_server.client().replicaof("127.0.0.1", primary_server.port)
        primary = primary_server.client()
        wait_for(
            lambda: primary.info("replication").get("min_slaves_good_slaves") == 1,
            10,
            description="the replica to count as good",
        )
        daemon = start_schedulerd(
            start_process, primary_server.url, [QUEUE], *FAST_LEASES, "--poll-interval", "0.2"
        )
        token = daemon_token(daemon).encode()
        wait_for(lambda: primary.get(KEYS.lease(QUEUE)) == token, 10, description="the daemon to lead")
        now = server_now(primary)
        job_ids = schedule(primary, QUEUE, [f"before-{number}" for number in range(20)], now - 1)
        # Due only after the replica is gone, and written now, while the primary still accepts writes.
        job_ids += schedule(primary, QUEUE, [f"later-{number}" for number in range(20)], now + 4.0)
        wait_for(
            lambda: primary.llen(KEYS.queue_list(QUEUE)) == 20, 10, description="the first jobs promoted"
        )

        replica_server.process.send_signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: primary.info("replication").get("min_slaves_good_slaves") == 0,
                10,
                description="the primary to count no good replica",
            )
            wait_for(lambda: server_now(primary) > now + 5.0, 10, description="the later jobs to fall due")
            time.sleep(1.0)
            listed_without_replica = primary.llen(KEYS.queue_list(QUEUE))
        finally:
            replica_server.process.send_signal(signal.SIGCONT)

        wait_for(
            lambda: primary.zcard(KEYS.scheduled_set(QUEUE)) == 0,
            15,
            description="every job promoted after the replica came back",
        )
        assert listed_without_replica == 20
        assert_each_promoted_once(primary, QUEUE, job_ids)
        assert daemon.is_running()
