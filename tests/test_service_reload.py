"""SIGHUP reloads the config file of a running `schedulerd run` process."""

from __future__ import annotations

import signal

from tests.support.waiting import wait_for
from tests.test_cli import KEYS, SCHEDULERD, log_events


def events_named(process, name: str) -> list[dict]:
    return [event for event in log_events(process) if event["event"] == name]


class TestReload:
    def test_reload_applies_rejects_and_ignores(self, redis_server, start_process, tmp_path):
        client = redis_server.client()
        config = tmp_path / "schedulerd.toml"
        config.write_text('queues = ["a"]\nbatch_size = 100\n')
        daemon = start_process([
            SCHEDULERD, "run", "--config", str(config), "--redis-url", redis_server.url,
            "--log-format", "json", "--poll-interval", "0.1", "--batch-size", "50",
        ])  # fmt: skip
        wait_for(lambda: client.exists(KEYS.lease("a")), 10)

        # Queues and log level apply; lease_ttl needs a restart; batch_size stays with its flag.
        config.write_text('queues = ["a", "b"]\nlease_ttl = 20\nbatch_size = 200\nlog_level = "debug"\n')
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: events_named(daemon, "reload_finished"), 10)
        wait_for(lambda: client.exists(KEYS.lease("b")), 10)
        assert events_named(daemon, "reload_finished")[0]["changed"] == ["queues", "log_level"]
        assert events_named(daemon, "reload_ignored")[0]["settings"] == ["lease_ttl"]
        wait_for(lambda: any(event["level"] == "debug" for event in log_events(daemon)), 10)

        # An invalid file is rejected in one line, and the running configuration stays.
        config.write_text('queues = ["a"]\nlease_ttl = "long"\n')
        daemon.send_signal(signal.SIGHUP)
        failed = wait_for(lambda: events_named(daemon, "reload_failed"), 10)
        assert len(failed) == 1
        assert f"invalid lease_ttl 'long' from {config} line 2" in failed[0]["error"]
        assert client.exists(KEYS.lease("a"), KEYS.lease("b")) == 2

        # Removing a queue releases its lease at once.
        config.write_text('queues = ["a"]\nlog_level = "debug"\n')
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: not client.exists(KEYS.lease("b")), 10)
        assert client.exists(KEYS.lease("a")) == 1
        assert events_named(daemon, "reload_finished")[-1]["changed"] == ["queues"]

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0

    def test_log_format_switches_to_console(self, redis_server, start_process, tmp_path):
        client = redis_server.client()
        config = tmp_path / "schedulerd.toml"
        config.write_text('queues = ["a"]\nlog_format = "json"\n')
        daemon = start_process([SCHEDULERD, "run", "--config", str(config), "--redis-url", redis_server.url])
        wait_for(lambda: client.exists(KEYS.lease("a")), 10)

        config.write_text('queues = ["a"]\nlog_format = "console"\n')
        daemon.send_signal(signal.SIGHUP)
        line = wait_for(lambda: next((x for x in daemon.read_log().splitlines() if "reload_finished" in x), None), 10)
        assert not line.startswith("{")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert "daemon_stopped" in daemon.read_log().splitlines()[-1]
