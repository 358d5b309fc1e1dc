"""Command line: parse options, build settings, call into the daemon. No Redis calls of its own."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click
import structlog
from redis import Redis
from redis.exceptions import RedisError

from schedulerd import __version__
from schedulerd.config import DEFAULT_CONFIG_PATH, SETTINGS, Setting, Settings, check_paths, load_settings
from schedulerd.connection import connect, redact_url
from schedulerd.daemon import Scheduler
from schedulerd.daemonize import (
    NotAPidFileError,
    PidFile,
    PidFileLockedError,
    SignalHandler,
    detach,
    pidfile_holder,
)
from schedulerd.discovery import QueueSelector
from schedulerd.errors import ConfigError, LocalRedisError, UnsupportedServerError
from schedulerd.health import HealthServer, LoopHealth, build_metrics, probe_client
from schedulerd.keys import Keys
from schedulerd.localredis import LocalRedis, answers, local_url
from schedulerd.logs import LogOutput
from schedulerd.notify import Notifier, SystemdNotifier, watchdog_interval_s
from schedulerd.reload import Reloader
from schedulerd.status import DEFAULT_MAX_OVERDUE_S, find_problems, format_json, format_table, read_status

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0  clean stop (SIGTERM or SIGINT)\n"
    "  1  runtime failure\n"
    "  2  usage or configuration error"
)

log = structlog.get_logger("schedulerd")


def _option_help(setting: Setting) -> str:
    default = setting.default
    if setting.kind == "queues" or default is None:
        shown_default = "none"
    elif setting.kind == "bool":
        shown_default = "on" if default else "off"
    else:
        shown_default = str(default)
    unit = f" Unit: {setting.unit}." if setting.unit else ""
    return f"{setting.help}{unit} [env: {setting.env_var}; default: {shown_default}]"


# Placeholders in --help for string settings that are not free text.
STRING_METAVARS = {"log_file": "PATH", "pidfile": "PATH", "http_address": "[HOST:]PORT"}


def settings_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per setting; none has a click default, so load_settings sees only what was given."""
    for setting in reversed(SETTINGS):
        if setting.kind == "bool":
            function = click.option(
                f"{setting.flag}/--no-{setting.flag[2:]}", setting.name, default=None, help=_option_help(setting)
            )(function)
            continue
        option_type: Any
        if setting.kind == "choice":
            option_type = click.Choice(setting.choices)
        elif setting.kind == "int":
            option_type = int
        elif setting.kind == "float":
            option_type = float
        else:
            option_type = str
        metavar = {"str": "TEXT", "queues": "Q1,Q2", "int": "INTEGER", "float": "SECONDS", "choice": None}[setting.kind]
        if setting.kind == "float" and setting.unit != "seconds":
            metavar = "NUMBER"
        metavar = STRING_METAVARS.get(setting.name, metavar)
        function = click.option(
            setting.flag,
            setting.name,
            type=option_type,
            default=None,
            metavar=metavar,
            help=_option_help(setting),
        )(function)
    function = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"TOML config file. [env: SCHEDULERD_CONFIG; default: {DEFAULT_CONFIG_PATH} when it exists]",
    )(function)
    return function


def _load(config_path: Path | None, flags: dict[str, Any]) -> Settings:
    try:
        settings = load_settings(config_path=config_path, flags=flags)
        if settings.redis_url is None:
            # Without a URL the local Redis port is in play; an invalid override is a usage error.
            local_url()
        return settings
    except ConfigError as error:
        click.echo(f"schedulerd: configuration error: {error}", err=True)
        sys.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="schedulerd")
def main() -> None:
    """Standalone scheduler daemon for RQ.

    Moves jobs that RQ producers schedule with enqueue_at() and enqueue_in() from
    rq:scheduled:<queue> onto rq:queue:<queue> when they fall due, under one lease per queue
    shared with RQ's own scheduler, so exactly one scheduler promotes each queue.

    Settings come from defaults < config file < SCHEDULERD_* environment variables <
    command-line flags.
    """


@main.command(epilog=EXIT_CODES_HELP)
@settings_options
def run(config_path: Path | None, **flags: Any) -> None:
    """Schedule the given queues until SIGTERM or SIGINT, then release every lease and exit 0.

    SIGHUP reopens the log file and reloads the configuration: changes to queues and logging
    apply at once, other changes only at the next start. With --daemon, every setting and the
    pidfile are checked before detaching, so errors still reach the terminal.
    """
    settings = _load(config_path, flags)
    _check_paths(settings)
    pidfile, stale_pid = _acquire_pidfile(settings)
    try:
        exit_code = _run(settings, config_path, flags, pidfile, stale_pid)
    finally:
        if pidfile is not None:
            pidfile.release()
    sys.exit(exit_code)


def _run(
    settings: Settings,
    config_path: Path | None,
    flags: dict[str, Any],
    pidfile: PidFile | None,
    stale_pid: int | None,
) -> int:
    """Start everything `schedulerd run` needs, run the scheduler, and return the exit code."""
    log_output = LogOutput()
    try:
        log_output.apply(settings.log_format, settings.log_level, settings.log_file)
    except OSError as error:
        click.echo(f"schedulerd: cannot open log file {settings.log_file}: {error.strerror}", err=True)
        return EXIT_USAGE

    detached = False

    def fail(event: str, message: str, **fields: Any) -> None:
        log.critical(event, error=message, **fields)
        if log_output.log_file is not None and not detached:
            # The log line went to the file; the operator at the terminal needs it too.
            click.echo(f"schedulerd: {message}", err=True)

    if stale_pid is not None and pidfile is not None:
        log.warning("pidfile_stale", pidfile=pidfile.path, stale_pid=stale_pid, detail="no running process held it")

    http_server: HealthServer | None = None
    if settings.http_address is not None:
        try:
            http_server = HealthServer(settings.http_address)
        except OSError as error:
            fail("http_listen_failed", f"cannot listen on {settings.http_address}: {error.strerror or error}")
            return EXIT_FAILURE

    url = settings.redis_url or local_url()
    start_local_redis = settings.redis_url is None and not answers(url)
    scheduler = Scheduler(settings.queues, _connect_or_exit(url), settings=settings)
    notifier = Notifier.from_environment()
    reloader = Reloader(
        scheduler, settings, lambda: load_settings(config_path=config_path, flags=flags), log_output, notifier
    )

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        scheduler.stop()

    def request_reload(signum: int, frame: FrameType | None) -> None:
        reloader.request()

    handlers: dict[signal.Signals, SignalHandler] = {
        signal.SIGTERM: request_stop,
        signal.SIGINT: request_stop,
        signal.SIGHUP: request_reload,
    }
    for signum, handler in handlers.items():
        signal.signal(signum, handler)

    if settings.daemon:
        if not _detach(pidfile, http_server, notifier, handlers, log_output, fail):
            return EXIT_FAILURE
        detached = True

    local_redis: LocalRedis | None = None
    if start_local_redis:
        try:
            local_redis = LocalRedis.start()
        except LocalRedisError as error:
            log.critical("local_redis_failed", error=str(error))
            return EXIT_FAILURE

    probe = _attach_observers(scheduler, settings, url, http_server, notifier)
    reloader.start()
    try:
        scheduler.run()
    except UnsupportedServerError as error:
        log.critical("redis_unsupported", error=str(error), redis=redact_url(url))
        return EXIT_USAGE
    finally:
        reloader.stop()
        if http_server is not None:
            http_server.stop()
        if probe is not None:
            probe.close()
        if local_redis is not None:
            local_redis.stop()
        if notifier is not None:
            notifier.close()
    return EXIT_OK


def _detach(
    pidfile: PidFile | None,
    http_server: HealthServer | None,
    notifier: Notifier | None,
    handlers: dict[signal.Signals, SignalHandler],
    log_output: LogOutput,
    fail: Callable[..., None],
) -> bool:
    """Become a daemon, keeping the pidfile lock, the listening socket and the notify socket open."""
    if log_output.log_file is None:
        log.warning("daemon_logs_discarded", detail="daemon mode without log_file sends log lines to /dev/null")
    preserved = [
        pidfile.fileno() if pidfile is not None else None,
        http_server.fileno() if http_server is not None else None,
        notifier.fileno() if notifier is not None else None,
    ]
    try:
        detach(preserved, handlers, log_output.log_file)
    except Exception as error:  # noqa: BLE001 - python-daemon raises its own DaemonError subclasses and OSError
        fail("daemon_detach_failed", f"cannot detach: {error}")
        return False

    log_output.capture_std_streams()
    if pidfile is not None:
        pidfile.write_pid()
    log.info("daemon_detached", pid=os.getpid(), pidfile=pidfile.path if pidfile is not None else None)
    if notifier is not None:
        notifier.send(f"MAINPID={os.getpid()}")
    return True


def _attach_observers(
    scheduler: Scheduler,
    settings: Settings,
    url: str,
    http_server: HealthServer | None,
    notifier: Notifier | None,
) -> Redis | None:
    """Start the HTTP listener and sd_notify reporting; return the listener's Redis client to close at exit."""
    probe: Redis | None = None
    if http_server is not None:
        probe = probe_client(url)
        health = LoopHealth(settings.poll_interval)
        registry, metrics = build_metrics(scheduler, health, probe)
        scheduler.add_observer(health)
        scheduler.add_observer(metrics)
        http_server.start(scheduler, health, registry, probe)
    if notifier is not None:
        scheduler.add_observer(_systemd_notifier(notifier, scheduler, settings))
    return probe


def _systemd_notifier(notifier: Notifier, scheduler: Scheduler, settings: Settings) -> SystemdNotifier:
    watchdog_s = watchdog_interval_s()
    if watchdog_s is not None and settings.poll_interval >= watchdog_s:
        # The loop pings once per iteration, and an idle iteration can last a poll interval.
        log.warning(
            "watchdog_interval_short",
            watchdog_ping_interval_s=watchdog_s,
            poll_interval_s=settings.poll_interval,
            detail="systemd may restart schedulerd while idle; lower poll_interval below WatchdogSec/2",
        )
    log.info("systemd_notify_enabled", notify_socket=notifier.address, watchdog_ping_interval_s=watchdog_s)
    return SystemdNotifier(notifier, scheduler, watchdog_s)


def _check_paths(settings: Settings) -> None:
    try:
        check_paths(settings)
    except ConfigError as error:
        click.echo(f"schedulerd: configuration error: {error}", err=True)
        sys.exit(EXIT_USAGE)


def _connect_or_exit(url: str) -> Redis:
    """Create the Redis client, or exit 2 when redis-py rejects an option of the URL."""
    try:
        client = connect(url)
        # redis-py checks some URL options only when it builds a connection, which this does
        # without connecting.
        client.connection_pool.make_connection().disconnect()  # type: ignore[no-untyped-call]
        return client
    except (ValueError, TypeError) as error:
        detail = str(error).replace(url, redact_url(url))
        click.echo(
            f"schedulerd: configuration error: invalid redis_url {redact_url(url)}: {detail}; "
            "fix the URL or its query options",
            err=True,
        )
        sys.exit(EXIT_USAGE)


def _acquire_pidfile(settings: Settings) -> tuple[PidFile | None, int | None]:
    """Lock the pidfile before anything else starts, or exit 2 when another instance holds it."""
    if settings.pidfile is None:
        return None, None
    pidfile = PidFile(settings.pidfile)
    try:
        stale_pid = pidfile.acquire()
    except (PidFileLockedError, NotAPidFileError) as error:
        click.echo(f"schedulerd: {error}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as error:
        click.echo(
            f"schedulerd: cannot lock pidfile {settings.pidfile}: {error.strerror or error}; fix --pidfile", err=True
        )
        sys.exit(EXIT_USAGE)
    return pidfile, stale_pid


CHECK_EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0  the settings are valid and Redis responded\n"
    "  1  Redis could not be reached\n"
    "  2  usage or configuration error"
)


@main.command(epilog=CHECK_EXIT_CODES_HELP)
@settings_options
def check(config_path: Path | None, **flags: Any) -> None:
    """Validate the settings and reach Redis once, without scheduling anything."""
    settings = _load(config_path, flags)
    _check_paths(settings)
    url = settings.redis_url or local_url()
    client = _connect_or_exit(url)
    try:
        version = client.info("server").get("redis_version")
    except Exception as error:  # noqa: BLE001 - any failure to reach Redis is reported the same way
        click.echo(f"schedulerd: cannot reach Redis at {redact_url(url)}: {error}", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(f"configuration valid; Redis {version} reachable at {redact_url(url)}")
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if setting.name == "redis_url" and value is not None:
            value = redact_url(value)
        click.echo(f"  {setting.name} = {value!r}  ({settings.sources.get(setting.name, 'default')})")
    if settings.pidfile is not None:
        locked, pid = pidfile_holder(settings.pidfile)
        if locked:
            click.echo(f"  pidfile {settings.pidfile} is held by running pid {pid}")


STATUS_EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0  every queue has a leader and no job is overdue by more than --max-overdue\n"
    "  1  a queue has no leader, a job is overdue, no queue matches, or Redis is unreachable\n"
    "  2  usage or configuration error"
)


@main.command(epilog=STATUS_EXIT_CODES_HELP)
@settings_options
@click.option("--json", "as_json", is_flag=True, default=False, help="Print JSON instead of a table.")
@click.option(
    "--max-overdue",
    "max_overdue_s",
    type=click.FloatRange(min=0),
    default=DEFAULT_MAX_OVERDUE_S,
    envvar="SCHEDULERD_STATUS_MAX_OVERDUE",
    metavar="SECONDS",
    help=f"Maximum time a due job may wait before the exit code is 1. Unit: seconds. "
    f"[env: SCHEDULERD_STATUS_MAX_OVERDUE; default: {DEFAULT_MAX_OVERDUE_S:g}]",
)
def status(config_path: Path | None, as_json: bool, max_overdue_s: float, **flags: Any) -> None:
    """Show each queue's leader, lease time left, and scheduled, due and overdue jobs, from Redis reads only."""
    settings = _load(config_path, flags)
    url = settings.redis_url or local_url()
    client = _connect_or_exit(url)
    keys = Keys(settings.key_prefix)
    try:
        selector = QueueSelector(settings.queues, keys)
        # Patterns list the queues they match now, as a running scheduler would find them.
        queues = selector.discover(client, scan_scheduled_sets=True) if selector.dynamic else settings.queues
        statuses = read_status(client, keys, queues)
    except RedisError as error:
        click.echo(f"schedulerd: cannot read status from Redis at {redact_url(url)}: {error}", err=True)
        sys.exit(EXIT_FAILURE)
    finally:
        client.close()
    problems = find_problems(statuses, max_overdue_s)
    if not statuses:
        # A monitoring check with a mistyped pattern must not pass for ever.
        problems.append(f"no queue matches {', '.join(settings.queues)}")
    click.echo(format_json(statuses, problems) if as_json else format_table(statuses, problems))
    sys.exit(EXIT_FAILURE if problems else EXIT_OK)
