"""Settings of the service features: HTTP address, log file, daemon mode and pidfile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schedulerd.config import check_paths, load_settings, parse_http_address
from schedulerd.errors import ConfigError
from tests.test_cli import run_command


def error_for(**kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(**kwargs)
    return str(caught.value)


class TestHttpAddress:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("9464", ("127.0.0.1", 9464)),
            ("0", ("127.0.0.1", 0)),
            ("0.0.0.0:9464", ("0.0.0.0", 9464)),
            ("localhost:65535", ("localhost", 65535)),
            ("[::1]:9464", ("::1", 9464)),
        ],
    )
    def test_accepted_forms(self, text, expected):
        assert parse_http_address(text) == expected

    @pytest.mark.parametrize("text", ["", "host", ":9464", "::1:9464", "[::1]", "host:65536", "host:port"])
    def test_rejected_forms(self, text):
        with pytest.raises(ValueError):
            parse_http_address(text)

    def test_invalid_address_names_file_line_and_fix(self, tmp_path):
        path = tmp_path / "schedulerd.toml"
        path.write_text('queues = ["a"]\nhttp_address = "metrics:99999"\n')
        message = error_for(config_path=path, environ={})
        assert "invalid http_address 'metrics:99999'" in message
        assert f"{path} line 2" in message
        assert "--http-address" in message

    def test_off_by_default(self):
        settings = load_settings(environ={}, flags={"queues": "a"})
        assert settings.http_address is None


class TestDaemonSettings:
    @pytest.mark.parametrize(("word", "expected"), [("yes", True), ("1", True), ("ON", True), ("off", False)])
    def test_daemon_from_environment(self, word, expected):
        environ = {"SCHEDULERD_QUEUES": "a", "SCHEDULERD_DAEMON": word, "SCHEDULERD_PIDFILE": "/run/s.pid"}
        assert load_settings(environ=environ).daemon is expected

    def test_daemon_rejects_other_words(self):
        message = error_for(environ={"SCHEDULERD_QUEUES": "a", "SCHEDULERD_DAEMON": "maybe"})
        assert "invalid daemon 'maybe' from environment SCHEDULERD_DAEMON" in message

    def test_daemon_from_file_must_be_boolean(self, tmp_path):
        path = tmp_path / "schedulerd.toml"
        path.write_text('queues = ["a"]\ndaemon = "yes"\npidfile = "/run/s.pid"\n')
        assert load_settings(config_path=path, environ={}).daemon is True
        path.write_text('queues = ["a"]\ndaemon = 1\n')
        assert "expected true or false" in error_for(config_path=path, environ={})

    def test_flag_overrides_file(self, tmp_path):
        path = tmp_path / "schedulerd.toml"
        path.write_text('queues = ["a"]\ndaemon = true\npidfile = "/run/s.pid"\n')
        settings = load_settings(config_path=path, environ={}, flags={"daemon": False})
        assert settings.daemon is False
        assert settings.sources["daemon"] == "flag --daemon"

    def test_daemon_needs_pidfile(self):
        message = error_for(environ={}, flags={"queues": "a", "daemon": True})
        assert "daemon mode (flag --daemon) needs a pidfile" in message
        assert "--pidfile" in message

    @pytest.mark.parametrize("name", ["pidfile", "log_file"])
    def test_daemon_needs_absolute_paths(self, name):
        flags = {"queues": "a", "daemon": True, "pidfile": "/run/s.pid", name: "relative/path"}
        message = error_for(environ={}, flags=flags)
        assert f"invalid {name} 'relative/path'" in message
        assert "absolute path" in message

    def test_foreground_allows_relative_paths(self):
        settings = load_settings(environ={}, flags={"queues": "a", "pidfile": "s.pid", "log_file": "s.log"})
        assert settings.pidfile == "s.pid"

    def test_empty_log_file_rejected(self):
        message = error_for(environ={"SCHEDULERD_QUEUES": "a", "SCHEDULERD_LOG_FILE": " "})
        assert "invalid log_file ' ' from environment SCHEDULERD_LOG_FILE: empty path" in message


class TestCheckPaths:
    def settings(self, **flags):
        return load_settings(environ={}, flags={"queues": "a", **flags})

    def test_missing_directory(self, tmp_path):
        missing = tmp_path / "missing" / "schedulerd.log"
        with pytest.raises(ConfigError) as caught:
            check_paths(self.settings(log_file=str(missing)))
        assert f"directory {missing.parent} does not exist" in str(caught.value)

    def test_directory_given_as_pidfile(self, tmp_path):
        with pytest.raises(ConfigError) as caught:
            check_paths(self.settings(pidfile=str(tmp_path)))
        assert "is a directory" in str(caught.value)

    @pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
    def test_read_only_directory(self, tmp_path):
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o500)
        with pytest.raises(ConfigError) as caught:
            check_paths(self.settings(pidfile=str(read_only / "s.pid")))
        assert "is not writable" in str(caught.value)

    def test_writable_paths_pass(self, tmp_path):
        check_paths(self.settings(pidfile=str(tmp_path / "s.pid"), log_file=str(tmp_path / "s.log")))


class TestCommands:
    def test_run_help_lists_service_options(self):
        result = run_command("run", "--help")
        assert result.returncode == 0
        for text in ("--http-address", "SCHEDULERD_HTTP_ADDRESS", "--log-file", "--daemon / --no-daemon",
                     "--pidfile", "SIGHUP"):
            assert text in result.stdout, text

    def test_check_rejects_invalid_http_address(self, tmp_path):
        result = run_command("check", "--queues", "a", "--http-address", "nowhere")
        assert result.returncode == 2
        assert "invalid http_address 'nowhere' from flag --http-address" in result.stderr

    def test_check_rejects_missing_log_directory(self, tmp_path):
        log_file = tmp_path / "missing" / "s.log"
        result = run_command("check", "--queues", "a", "--log-file", str(log_file))
        assert result.returncode == 2
        assert "does not exist" in result.stderr

    def test_check_lists_new_settings(self, redis_server, tmp_path):
        result = run_command(
            "check", "--queues", "a", "--redis-url", redis_server.url,
            "--http-address", "9464", "--pidfile", str(tmp_path / "s.pid"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "http_address = '9464'  (flag --http-address)" in result.stdout
        assert "daemon = False  (default)" in result.stdout
        assert not Path(tmp_path / "s.pid").exists()
