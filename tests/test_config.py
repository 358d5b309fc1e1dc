"""Settings: precedence of the sources and the messages of invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedulerd.config import SETTINGS, Settings, load_settings
from schedulerd.connection import redact_url
from schedulerd.errors import ConfigError


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedulerd.toml"
    path.write_text(text)
    return path


class TestPrecedence:
    def test_defaults_apply(self):
        settings = load_settings(config_path=None, environ={}, flags={"queues": "default"})
        assert settings.lease_ttl == 10.0
        assert settings.sources["lease_ttl"] == "default"

    def test_file_over_default(self, tmp_path):
        path = write_config(tmp_path, 'queues = ["a"]\nlease_ttl = 30\n')
        settings = load_settings(config_path=path, environ={})
        assert settings.lease_ttl == 30.0
        assert settings.sources["lease_ttl"] == f"{path} line 2"

    def test_environment_over_file(self, tmp_path):
        path = write_config(tmp_path, 'queues = ["a"]\nlease_ttl = 30\n')
        settings = load_settings(config_path=path, environ={"SCHEDULERD_LEASE_TTL": "40"})
        assert settings.lease_ttl == 40.0
        assert settings.sources["lease_ttl"] == "environment SCHEDULERD_LEASE_TTL"

    def test_flag_over_environment(self, tmp_path):
        settings = load_settings(
            environ={"SCHEDULERD_QUEUES": "a", "SCHEDULERD_LEASE_TTL": "40"}, flags={"lease_ttl": 50.0}
        )
        assert settings.lease_ttl == 50.0
        assert settings.sources["lease_ttl"] == "flag --lease-ttl"

    def test_queues_split_on_commas(self):
        settings = load_settings(environ={"SCHEDULERD_QUEUES": "default, high ,low"})
        assert settings.queues == ("default", "high", "low")

    def test_rq_key_prefix_is_a_fallback(self):
        settings = load_settings(environ={"RQ_KEY_PREFIX": "myapp", "SCHEDULERD_QUEUES": "a"})
        assert settings.key_prefix == "myapp"

    def test_config_path_from_environment(self, tmp_path):
        path = write_config(tmp_path, 'queues = ["from-file"]\n')
        settings = load_settings(environ={"SCHEDULERD_CONFIG": str(path)})
        assert settings.queues == ("from-file",)

    def test_every_setting_has_a_dataclass_field(self):
        names = {setting.name for setting in SETTINGS}
        assert names <= set(Settings.__dataclass_fields__)


class TestInvalid:
    def error_for(self, **kwargs) -> str:
        with pytest.raises(ConfigError) as caught:
            load_settings(**kwargs)
        return str(caught.value)

    def test_no_queues(self):
        message = self.error_for(environ={})
        assert "no queues" in message
        assert "--queues" in message

    def test_unknown_key_names_file_and_line(self, tmp_path):
        path = write_config(tmp_path, 'queues = ["a"]\n\nlease_tll = 5\n')
        message = self.error_for(config_path=path, environ={})
        assert "unknown setting 'lease_tll'" in message
        assert f"{path} line 3" in message

    def test_wrong_type_in_file(self, tmp_path):
        path = write_config(tmp_path, 'queues = ["a"]\nbatch_size = "many"\n')
        message = self.error_for(config_path=path, environ={})
        assert "invalid batch_size 'many'" in message
        assert "line 2" in message

    def test_wrong_type_in_environment(self):
        message = self.error_for(environ={"SCHEDULERD_QUEUES": "a", "SCHEDULERD_LEASE_TTL": "ten"})
        assert "SCHEDULERD_LEASE_TTL" in message
        assert "'ten'" in message

    def test_lease_ttl_too_close_to_renew_interval(self):
        message = self.error_for(environ={}, flags={"queues": "a", "lease_ttl": 5.0})
        assert "lease TTL 5.0 s (flag --lease-ttl) must be at least 3 x renew interval 2.0 s" in message
        assert "raise --lease-ttl or lower --renew-interval" in message

    @pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
    def test_non_positive_interval(self, value):
        message = self.error_for(environ={}, flags={"queues": "a", "poll_interval": value})
        assert "poll_interval" in message

    @pytest.mark.parametrize("url", ["http://localhost", "redis://", "unix://", "redis://host:notaport/0"])
    def test_malformed_redis_url(self, url):
        message = self.error_for(environ={}, flags={"queues": "a", "redis_url": url})
        assert "invalid redis_url" in message

    def test_redis_url_password_not_in_message(self):
        message = self.error_for(environ={}, flags={"queues": "a", "redis_url": "http://user:s3cret@host"})
        assert "s3cret" not in message

    def test_batch_size_out_of_range(self):
        message = self.error_for(environ={}, flags={"queues": "a", "batch_size": 0})
        assert "batch_size 0" in message

    def test_duplicate_queue(self):
        message = self.error_for(environ={"SCHEDULERD_QUEUES": "a,b,a"})
        assert "queue listed twice" in message

    def test_invalid_key_prefix(self):
        message = self.error_for(environ={}, flags={"queues": "a", "key_prefix": "my prefix"})
        assert "invalid key_prefix" in message

    def test_unreadable_file(self, tmp_path):
        message = self.error_for(config_path=tmp_path / "missing.toml", environ={})
        assert "cannot read config file" in message

    def test_invalid_toml(self, tmp_path):
        path = write_config(tmp_path, "queues = [\n")
        assert "invalid TOML" in self.error_for(config_path=path, environ={})


class TestRedaction:
    def test_password_replaced(self):
        assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"

    def test_password_only(self):
        assert redact_url("rediss://:s3cret@host/0") == "rediss://:***@host/0"

    def test_url_without_password_unchanged(self):
        assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


class TestHostileValues:
    def error_for(self, **kwargs) -> str:
        with pytest.raises(ConfigError) as caught:
            load_settings(**kwargs)
        return str(caught.value)

    def test_non_utf8_file(self, tmp_path):
        path = tmp_path / "latin1.toml"
        path.write_bytes('queues = ["caf\xe9"]\n'.encode("latin-1"))
        assert "not UTF-8" in self.error_for(config_path=path, environ={})

    def test_utf8_bom_accepted(self, tmp_path):
        path = tmp_path / "bom.toml"
        path.write_bytes(b'\xef\xbb\xbfqueues = ["a"]\n')
        assert load_settings(config_path=path, environ={}).queues == ("a",)

    @pytest.mark.parametrize(
        ("name", "value"),
        [("lease_ttl", 1e308), ("poll_interval", 1e-9), ("renew_interval", 1e-9), ("contest_interval", 1e12)],
    )
    def test_durations_out_of_bounds(self, name, value):
        flags = {"queues": "a", name: value}
        assert f"invalid {name}" in self.error_for(environ={}, flags=flags)

    def test_job_timeout_above_c_int(self):
        message = self.error_for(environ={}, flags={"queues": "a", "default_job_timeout": 2**31})
        assert "default_job_timeout" in message


class TestRedactionOfOddURLs:
    @pytest.mark.parametrize(
        "url",
        [
            "redis://:ab/cd@host:1/0",
            "redis://:abcd#ef@host:1/0",
            "redis://:ab?cd@host/0",
            "redis://:p%40ss@127.0.0.1:99999/0",
            "redis://host:1/0?password=s3cret",
            "redis+sentinel://h1,h2/m?sentinel_password=s3cret",
        ],
    )
    def test_secret_masked(self, url):
        shown = redact_url(url)
        for secret in ("cd", "ef", "p%40ss", "s3cret"):
            if secret in url:
                assert secret not in shown

    def test_unreadable_port_message_hides_password(self):
        message = TestHostileValues().error_for(
            environ={}, flags={"queues": "a", "redis_url": "redis://:ab/cd@host:1/0"}
        )
        assert "cd" not in message.replace("percent-encode", "")
