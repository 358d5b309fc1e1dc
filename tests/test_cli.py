"""The schedulerd command as real processes: exit codes, signals, logs, local Redis, failover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schedulerd import __version__
from schedulerd.keys import Keys
from tests.support.redis_server import pick_free_port
from tests.support.waiting import wait_for

KEYS = Keys()
SCHEDULERD = str(Path(sys.executable).parent / "schedulerd")


def run_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCHEDULERD, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def log_events(process) -> list[dict]:
    entries = []
    for line in process.read_log().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def event_names(process) -> list[str]:
    return [entry["event"] for entry in log_events(process)]


def start_daemon(start_process, url: str | None, *extra: str, env: dict[str, str] | None = None):
    argv = [SCHEDULERD, "run", "--log-format", "json", *extra]
    if url is not None:
        argv += ["--redis-url", url]
    return start_process(argv, env={**os.environ, **(env or {})})


def server_now(client) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def schedule(client, job_id: str, score: float, queue: str = "default") -> None:
    client.hset(KEYS.job_hash(job_id), mapping={"data": "payload", "status": "scheduled"})
    client.zadd(KEYS.scheduled_set(queue), {job_id: score})


class TestUsage:
    def test_version(self):
        result = run_command("--version")
        assert result.returncode == 0
        assert __version__ in result.stdout

    def test_help_lists_exit_codes_and_units(self):
        result = run_command("run", "--help")
        assert result.returncode == 0
        assert "Exit codes" in result.stdout
        assert "SCHEDULERD_LEASE_TTL" in result.stdout
        assert "seconds" in result.stdout

    def test_invalid_setting_exits_2(self):
        result = run_command("run", "--queues", "a", "--lease-ttl", "1", env={"SCHEDULERD_CONFIG": "/nonexistent"})
        assert result.returncode == 2
        assert "configuration error" in result.stderr

    def test_missing_queues_exits_2(self, tmp_path):
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        result = run_command("run", "--config", str(empty))
        assert result.returncode == 2
        assert "no queues" in result.stderr

    def test_check_reports_unreachable_redis(self):
        port = pick_free_port()
        result = run_command("check", "--queues", "a", "--redis-url", f"redis://127.0.0.1:{port}/0")
        assert result.returncode == 1
        assert "cannot reach Redis" in result.stderr

    def test_check_accepts_valid_settings(self, redis_server):
        result = run_command("check", "--queues", "a", "--redis-url", redis_server.url)
        assert result.returncode == 0
        assert "configuration valid" in result.stdout


class TestSignals:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_signal_steps_down_and_exits_0(self, redis_server, start_process, signum):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url, "--queues", "a,b")
        wait_for(lambda: client.exists(KEYS.lease("a"), KEYS.lease("b")) == 2, 10)

        daemon.send_signal(signum)
        assert daemon.wait(10) == 0
        assert client.exists(KEYS.lease("a"), KEYS.lease("b")) == 0
        names = event_names(daemon)
        assert names.count("lease_released") == 2
        assert names[-1] == "daemon_stopped"

    def test_promotes_and_logs_json(self, redis_server, start_process):
        client = redis_server.client()
        daemon = start_daemon(start_process, redis_server.url, "--queues", "default")
        schedule(client, "j", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 10)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        promoted = [e for e in log_events(daemon) if e["event"] == "jobs_promoted"]
        assert promoted[0]["moved"] == 1
        assert promoted[0]["queue"] == "default"


class TestSecrets:
    def test_password_never_logged(self, redis_server_factory, start_process):
        server = redis_server_factory(requirepass="s3cret-pw")
        client = server.client(password="s3cret-pw")
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        daemon = start_daemon(start_process, url, "--queues", "default", "--log-level", "debug")
        wait_for(lambda: client.exists(KEYS.lease("default")), 10)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert "s3cret-pw" not in daemon.read_log()

    def test_wrong_password_logged_without_secret(self, redis_server_factory, start_process):
        server = redis_server_factory(requirepass="right-pw")
        url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        daemon = start_daemon(start_process, url, "--queues", "default")
        wait_for(lambda: "redis_unavailable" in event_names(daemon), 10)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert "wrong-pw" not in daemon.read_log()


class TestLocalRedis:
    def test_starts_local_redis_without_url(self, start_process, tmp_path):
        port = pick_free_port()
        env = {"SCHEDULERD_LOCAL_REDIS_PORT": str(port), "XDG_STATE_HOME": str(tmp_path)}
        daemon = start_daemon(start_process, None, "--queues", "default", env=env)
        wait_for(lambda: "lease_acquired" in event_names(daemon), 15)

        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        schedule(client, "j", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 10)
        started = next(e for e in log_events(daemon) if e["event"] == "local_redis_started")
        assert started["url"] == f"redis://127.0.0.1:{port}/0"

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        assert "local_redis_stopped" in event_names(daemon)
        assert (tmp_path / "schedulerd" / "redis" / "appendonly.aof").exists()


class TestFailover:
    def test_standby_process_takes_over_after_sigterm(self, redis_server, start_process):
        client = redis_server.client()
        leader = start_daemon(start_process, redis_server.url, "--queues", "default")
        wait_for(lambda: client.exists(KEYS.lease("default")), 10)
        standby = start_daemon(start_process, redis_server.url, "--queues", "default")
        wait_for(lambda: "redis_connected" in event_names(standby), 10)
        leader_token = client.get(KEYS.lease("default"))

        leader.send_signal(signal.SIGTERM)
        assert leader.wait(10) == 0
        wait_for(lambda: client.get(KEYS.lease("default")) not in (None, leader_token), 5)
        schedule(client, "j", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 5)

    def test_standby_takes_over_after_kill_9(self, redis_server, start_process):
        client = redis_server.client()
        fast = ("--queues", "default", "--lease-ttl", "2", "--renew-interval", "0.5", "--contest-interval", "0.5")
        leader = start_daemon(start_process, redis_server.url, *fast)
        wait_for(lambda: client.exists(KEYS.lease("default")), 10)
        leader_token = client.get(KEYS.lease("default"))
        standby = start_daemon(start_process, redis_server.url, *fast)
        wait_for(lambda: "redis_connected" in event_names(standby), 10)

        leader.kill()
        wait_for(lambda: client.get(KEYS.lease("default")) not in (None, leader_token), 10)
        schedule(client, "j", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 5)


class TestOperatorMistakes:
    def test_pidfile_that_is_not_a_pidfile_is_kept(self, redis_server, tmp_path):
        victim = tmp_path / "schedulerd.toml"
        victim.write_text('queues = ["a"]\n')
        result = run_command(
            "run", "--queues", "a", "--redis-url", redis_server.url, "--pidfile", str(victim)
        )
        assert result.returncode == 2
        assert "does not contain a pid" in result.stderr
        assert victim.read_text() == 'queues = ["a"]\n'

    def test_status_pattern_matching_nothing_fails(self, redis_server):
        result = run_command("status", "--queues", "nomatch*", "--redis-url", redis_server.url)
        assert result.returncode == 1
        assert "no queue matches nomatch*" in result.stdout

    def test_unknown_url_option_exits_2(self):
        result = run_command("check", "--queues", "a", "--redis-url", "redis://127.0.0.1:1/0?foo=bar")
        assert result.returncode == 2
        assert "invalid redis_url" in result.stderr

    def test_standby_says_why_it_waits(self, redis_server, start_process):
        client = redis_server.client()
        client.set(KEYS.lease("default"), "4242", ex=60)
        daemon = start_daemon(start_process, redis_server.url, "--queues", "default")
        wait_for(lambda: "standby" in event_names(daemon), 10)
        standby = next(e for e in log_events(daemon) if e["event"] == "standby")
        assert standby["queues"] == ["default"]
