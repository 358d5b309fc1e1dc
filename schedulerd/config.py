"""Settings: defaults < config file < SCHEDULERD_* environment variables < command-line flags.

Every default is written once, in SETTINGS below; the CLI help, the example config file and
the validation messages all read it from there.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schedulerd.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/schedulerd/schedulerd.toml")
ENV_PREFIX = "SCHEDULERD_"
REDIS_URL_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# RQ 3.0 accepts only these characters in RQ_KEY_PREFIX.
KEY_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.:{}-]+")
# Lua's unpack and the per-call time budget both bound a batch.
MAX_BATCH_SIZE = 5000
# Bounds of the durations, in seconds. Below the minimums the loop spins; above the maximums
# Redis rejects the millisecond TTLs, or a setting is surely a unit mistake.
INTERVAL_BOUNDS_S = {
    "lease_ttl": (1.0, 86400.0),
    "renew_interval": (0.05, 28800.0),
    "contest_interval": (0.1, 604800.0),
    "poll_interval": (0.01, 3600.0),
}
# RQ workers pass a job's timeout to the operating system as a C int.
MAX_JOB_TIMEOUT_S = 2**31 - 1
# A bare port in http_address listens on loopback only; exposing metrics takes an explicit host.
DEFAULT_HTTP_HOST = "127.0.0.1"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str
    """One of "str", "float", "int", "bool", "queues", "choice"."""
    default: Any
    help: str
    unit: str = ""
    choices: tuple[str, ...] = ()

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("redis_url", "str", None,
            "Redis to schedule on: redis://[user:password@]host:port/db, rediss:// for TLS, or "
            "unix:///path/to/redis.sock. When no URL is given anywhere, schedulerd uses "
            "redis://127.0.0.1:6379/0 and starts a local redis-server there if none answers "
            "(SCHEDULERD_LOCAL_REDIS_PORT picks another port)."),
    Setting("queues", "queues", (),
            "Queues to schedule, comma-separated on the command line and in the environment, a "
            "list in the config file. Names with *, ? or [ are glob patterns matched against the "
            "queues RQ knows, such as '*' or 'reports-*'. Required."),
    Setting("key_prefix", "str", "rq",
            "Prefix of every Redis key, as RQ 3.0's RQ_KEY_PREFIX (read when this is not set)."),
    Setting("lease_ttl", "float", 10.0,
            "Lifetime of a queue lease; after a crash, a standby takes over once it expires.",
            unit="seconds"),
    Setting("renew_interval", "float", 2.0,
            "How often a leader extends its leases; at most a third of the lease TTL.",
            unit="seconds"),
    Setting("contest_interval", "float", 900.0,
            "How often a standby tries to acquire free leases (it also tries at start and when a "
            "leader steps down).", unit="seconds"),
    Setting("poll_interval", "float", 1.0,
            "Longest time between two checks of a led queue; the leader also wakes when the next "
            "job falls due sooner.", unit="seconds"),
    Setting("batch_size", "int", 200,
            f"Most job ids one promote call moves (1 to {MAX_BATCH_SIZE}); a pass keeps calling "
            "until nothing is due. Smaller batches block Redis for less time per call.",
            unit="jobs"),
    Setting("default_job_timeout", "int", 180,
            "Timeout written to a promoted job that has none, as RQ's Queue default_timeout.",
            unit="seconds"),
    Setting("balance", "bool", False,
            "Share the queues evenly with the other instances that also run with balance on: "
            "each leads about its share, and hands queues over at once when instances join or "
            "leave."),
    Setting("log_format", "choice", "auto",
            "Log output: json, console, or auto (console on a terminal, JSON otherwise).",
            choices=LOG_FORMATS),
    Setting("log_level", "choice", "info", "Lowest level logged.", choices=LOG_LEVELS),
    Setting("log_file", "str", None,
            "File to append log lines to instead of stderr; reopened on SIGHUP, so logrotate can "
            "move it. Must be an absolute path in daemon mode."),
    Setting("http_address", "str", None,
            "Address of the HTTP listener for /healthz, /readyz and /metrics: PORT (loopback "
            "only), HOST:PORT or [IPV6]:PORT; port 0 picks a free port. Off when not set."),
    Setting("daemon", "bool", False,
            "Detach from the terminal and run in the background; needs pidfile. Leave off under "
            "systemd, Docker and Kubernetes, which keep the process in the foreground."),
    Setting("pidfile", "str", None,
            "File holding the process id, locked while schedulerd runs, so a second instance "
            "with the same pidfile exits with code 2. Must be an absolute path in daemon mode."),
)

SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Validated settings of one schedulerd instance."""

    queues: tuple[str, ...]
    redis_url: str | None = None
    key_prefix: str = "rq"
    lease_ttl: float = 10.0
    renew_interval: float = 2.0
    contest_interval: float = 900.0
    poll_interval: float = 1.0
    batch_size: int = 200
    default_job_timeout: int = 180
    balance: bool = False
    log_format: str = "auto"
    log_level: str = "info"
    log_file: str | None = None
    http_address: str | None = None
    daemon: bool = False
    pidfile: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each value came from: "default", "file PATH line N", "environment NAME", "flag --NAME"."""


def _check_defaults_match() -> None:
    # The dataclass defaults and SETTINGS must agree; this runs at import so a drift fails fast.
    for setting in SETTINGS:
        if setting.name == "queues":
            continue
        declared = Settings.__dataclass_fields__[setting.name].default
        assert declared == setting.default, f"default of {setting.name} differs: {declared} != {setting.default}"


_check_defaults_match()


def split_queues(text: str) -> tuple[str, ...]:
    """Split a comma-separated queue list, trimming spaces around each name."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _convert(setting: Setting, value: Any, source: str) -> Any:
    """Convert a raw value (a string from the environment or a flag, or a TOML value)."""
    fix = f"set {setting.name} ({source}) to {_expected(setting)}"
    if setting.kind == "queues":
        if isinstance(value, str):
            return split_queues(value)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"invalid {setting.name} {value!r} from {source}: expected a list of queue names; {fix}")
    if setting.kind == "bool":
        return _convert_bool(setting, value, source, fix)
    if setting.kind in ("str", "choice"):
        if not isinstance(value, str):
            raise ConfigError(f"invalid {setting.name} {value!r} from {source}: expected a string; {fix}")
        return value
    if setting.kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"invalid {setting.name} {value!r} from {source}: expected an integer; {fix}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"invalid {setting.name} {value!r} from {source}: expected an integer; {fix}") from None
    if setting.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"invalid {setting.name} {value!r} from {source}: expected a number; {fix}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"invalid {setting.name} {value!r} from {source}: expected a number; {fix}") from None
    raise AssertionError(setting.kind)


def _convert_bool(setting: Setting, value: Any, source: str, fix: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ConfigError(f"invalid {setting.name} {value!r} from {source}: expected true or false; {fix}")


def _expected(setting: Setting) -> str:
    if setting.kind == "bool":
        return "true or false (also 1/0, yes/no, on/off in the environment)"
    if setting.kind == "choice":
        return "one of " + ", ".join(setting.choices)
    if setting.kind == "queues":
        return "queue names such as default,high"
    if setting.kind == "int":
        return f"a whole number of {setting.unit}" if setting.unit else "a whole number"
    if setting.kind == "float":
        return f"a number of {setting.unit}" if setting.unit else "a number"
    return "a string"


def _line_of(text: str, name: str) -> int | None:
    pattern = re.compile(rf"^[ \t]*{re.escape(name)}[ \t]*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def read_file(path: Path) -> dict[str, tuple[Any, str]]:
    """Read a TOML config file into {name: (value, source)}; unknown keys are an error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ConfigError(
            f"cannot read config file {path}: {error.strerror}; fix the path given to --config or SCHEDULERD_CONFIG"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"invalid config file {path}: byte {error.start} is not UTF-8; save the file as UTF-8"
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid TOML in config file {path}: {error}") from None

    values: dict[str, tuple[Any, str]] = {}
    for name, value in document.items():
        line = _line_of(text, name)
        source = f"{path} line {line}" if line else str(path)
        if name not in SETTINGS_BY_NAME:
            known = ", ".join(SETTINGS_BY_NAME)
            raise ConfigError(f"unknown setting {name!r} in {source}; known settings: {known}")
        values[name] = (_convert(SETTINGS_BY_NAME[name], value, source), source)
    return values


def read_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Read SCHEDULERD_* variables (and RQ_KEY_PREFIX as a fallback for the key prefix)."""
    values: dict[str, tuple[Any, str]] = {}
    for setting in SETTINGS:
        if setting.env_var in environ:
            source = f"environment {setting.env_var}"
            values[setting.name] = (_convert(setting, environ[setting.env_var], source), source)
    if "key_prefix" not in values and "RQ_KEY_PREFIX" in environ:
        values["key_prefix"] = (environ["RQ_KEY_PREFIX"], "environment RQ_KEY_PREFIX")
    return values


def read_flags(flags: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """Read command-line values; None means the flag was not given."""
    values: dict[str, tuple[Any, str]] = {}
    for name, value in flags.items():
        if value is None or (name == "queues" and not value):
            continue
        setting = SETTINGS_BY_NAME[name]
        source = f"flag {setting.flag}"
        values[name] = (_convert(setting, value, source), source)
    return values


def load_settings(
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    file_reader: Callable[[Path], dict[str, tuple[Any, str]]] = read_file,
) -> Settings:
    """Merge every source by precedence and validate the result.

    ``config_path`` None means the default path, read only when it exists.
    """
    environ = os.environ if environ is None else environ
    if config_path is None and ENV_PREFIX + "CONFIG" in environ:
        config_path = Path(environ[ENV_PREFIX + "CONFIG"])
    if config_path is None and DEFAULT_CONFIG_PATH.exists():
        config_path = DEFAULT_CONFIG_PATH

    merged: dict[str, tuple[Any, str]] = {s.name: (s.default, "default") for s in SETTINGS}
    if config_path is not None:
        merged.update(file_reader(config_path))
    merged.update(read_environment(environ))
    merged.update(read_flags(flags or {}))

    values = {name: value for name, (value, _) in merged.items()}
    sources = {name: source for name, (_, source) in merged.items()}
    settings = Settings(**values, sources=sources)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Raise ConfigError for the first invalid value, naming its source and the fix."""
    source = settings.sources.get

    if not settings.queues:
        raise ConfigError(
            f"no queues to schedule ({source('queues', 'default')}); "
            "pass --queues default,high, set SCHEDULERD_QUEUES, or add queues = [\"default\"] to the config file"
        )
    for queue in settings.queues:
        if not queue or queue != queue.strip():
            raise ConfigError(
                f"invalid queue name {queue!r} from {source('queues')}: names must be non-empty "
                "and have no leading or trailing spaces; fix the queue list"
            )
    if len(set(settings.queues)) != len(settings.queues):
        duplicates = sorted({q for q in settings.queues if settings.queues.count(q) > 1})
        raise ConfigError(f"queue listed twice from {source('queues')}: {', '.join(duplicates)}; list each queue once")

    if settings.redis_url is not None:
        validate_redis_url(settings.redis_url, source("redis_url", "default"))

    if not KEY_PREFIX_PATTERN.fullmatch(settings.key_prefix):
        raise ConfigError(
            f"invalid key_prefix {settings.key_prefix!r} from {source('key_prefix')}: only letters, digits "
            "and _ . : - { } are allowed (RQ's rule); use the prefix your RQ producers use, normally rq"
        )

    for name, (low_s, high_s) in INTERVAL_BOUNDS_S.items():
        value = getattr(settings, name)
        if not low_s <= value <= high_s:
            flag = SETTINGS_BY_NAME[name].flag
            raise ConfigError(
                f"invalid {name} {value} s from {source(name)}: must be {low_s} to {high_s} seconds; fix {flag}"
            )
    if settings.lease_ttl < 3 * settings.renew_interval:
        raise ConfigError(
            f"lease TTL {settings.lease_ttl} s ({source('lease_ttl')}) must be at least 3 x renew interval "
            f"{settings.renew_interval} s ({source('renew_interval')}), so one slow renewal does not lose "
            "the lease; raise --lease-ttl or lower --renew-interval"
        )
    if settings.lease_ttl < 1:
        raise ConfigError(
            f"lease TTL {settings.lease_ttl} s from {source('lease_ttl')} is below 1 s; "
            "Redis and network pauses would lose leases; raise --lease-ttl"
        )

    if not 1 <= settings.batch_size <= MAX_BATCH_SIZE:
        raise ConfigError(
            f"invalid batch_size {settings.batch_size} from {source('batch_size')}: must be 1 to "
            f"{MAX_BATCH_SIZE}; fix --batch-size"
        )
    if not 1 <= settings.default_job_timeout <= MAX_JOB_TIMEOUT_S:
        raise ConfigError(
            f"invalid default_job_timeout {settings.default_job_timeout} from {source('default_job_timeout')}: "
            f"must be 1 to {MAX_JOB_TIMEOUT_S} seconds; fix --default-job-timeout"
        )
    for name in ("log_format", "log_level"):
        choices = SETTINGS_BY_NAME[name].choices
        value = getattr(settings, name)
        if value not in choices:
            raise ConfigError(
                f"invalid {name} {value!r} from {source(name)}: must be one of {', '.join(choices)}"
            )

    if settings.http_address is not None:
        try:
            parse_http_address(settings.http_address)
        except ValueError as error:
            raise ConfigError(
                f"invalid http_address {settings.http_address!r} from {source('http_address')}: {error}; "
                "use PORT (loopback only), HOST:PORT or [IPV6]:PORT, for example 127.0.0.1:9464, "
                "with a port from 0 to 65535 (0 picks a free one); fix --http-address"
            ) from None
    _validate_paths(settings)


def _validate_paths(settings: Settings) -> None:
    source = settings.sources.get
    for name in ("log_file", "pidfile"):
        value = getattr(settings, name)
        if value is None:
            continue
        flag = SETTINGS_BY_NAME[name].flag
        if not value.strip():
            raise ConfigError(f"invalid {name} {value!r} from {source(name)}: empty path; give a file path to {flag}")
        if settings.daemon and not Path(value).is_absolute():
            raise ConfigError(
                f"invalid {name} {value!r} from {source(name)}: a relative path, but daemon mode "
                f"({source('daemon')}) changes the working directory to /; give an absolute path to {flag}"
            )
    if settings.daemon and settings.pidfile is None:
        raise ConfigError(
            f"daemon mode ({source('daemon')}) needs a pidfile, so the background process can be found "
            "and stopped; set --pidfile, for example /run/schedulerd/schedulerd.pid"
        )


def parse_http_address(text: str) -> tuple[str, int]:
    """Split "PORT", "HOST:PORT" or "[IPV6]:PORT" into (host, port); raise ValueError with the rule broken.

    A bare port means the loopback address, so metrics are never exposed by accident.
    """
    text = text.strip()
    if text.isdigit():
        host, port_text = DEFAULT_HTTP_HOST, text
    elif text.startswith("["):
        closing = text.find("]")
        if closing < 0 or text[closing + 1:closing + 2] != ":":
            raise ValueError("an IPv6 address needs the form [ADDRESS]:PORT")
        host, port_text = text[1:closing], text[closing + 2:]
    else:
        host, separator, port_text = text.rpartition(":")
        if not separator:
            raise ValueError("no port")
        if ":" in host:
            raise ValueError("an IPv6 address must be in brackets")
    if not host:
        raise ValueError("no host before the colon")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def check_paths(settings: Settings) -> None:
    """Raise ConfigError when the log file or pidfile cannot be written by this process.

    Kept out of ``validate`` because it reads the local file system: ``schedulerd status``
    may run on a host where these paths do not exist.
    """
    for name in ("log_file", "pidfile"):
        value = getattr(settings, name)
        if value is None:
            continue
        path = Path(value)
        where = f"{name} {value} ({settings.sources.get(name)})"
        flag = SETTINGS_BY_NAME[name].flag
        if path.is_dir():
            raise ConfigError(f"invalid {where}: is a directory; give a file path to {flag}")
        directory = path.parent
        if not directory.is_dir():
            raise ConfigError(f"invalid {where}: directory {directory} does not exist; create it or fix {flag}")
        # The pidfile is created and removed, so its directory must be writable even when the file exists.
        if (name == "pidfile" or not path.exists()) and not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(
                f"invalid {where}: directory {directory} is not writable by uid {os.getuid()}; "
                f"fix its permissions or {flag}"
            )
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigError(
                f"invalid {where}: the file is not writable by uid {os.getuid()}; fix its permissions or {flag}"
            )


def validate_redis_url(url: str, source: str) -> None:
    from schedulerd.connection import SENTINEL_SCHEMES, parse_sentinel_url, redact_url

    shown = redact_url(url)
    if url.partition("://")[0] in SENTINEL_SCHEMES:
        try:
            parse_sentinel_url(url)
        except ValueError as error:
            raise ConfigError(
                f"invalid redis_url {shown} from {source}: {error}; "
                "use redis+sentinel://host1:26379,host2:26379/service_name/db"
            ) from None
        return
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"invalid redis_url {shown} from {source}: the host or port cannot be read; use "
            "redis://[user:password@]host:port/db, and percent-encode / # ? @ in the password"
        ) from None
    if parts.scheme not in REDIS_URL_SCHEMES:
        raise ConfigError(
            f"invalid redis_url {shown} from {source}: scheme {parts.scheme!r} is not one of "
            f"{', '.join(REDIS_URL_SCHEMES)}; use redis://host:port/db, rediss://, unix:///path "
            "or redis+sentinel://host:26379/service_name"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(f"invalid redis_url {shown} from {source}: no socket path; use unix:///path/to/redis.sock")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"invalid redis_url {shown} from {source}: no host; use redis://host:port/db")
    del port
