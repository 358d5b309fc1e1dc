"""Command line: parse options, build settings, call into the daemon. No Redis calls of its own."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click
import structlog

from schedulerd import __version__
from schedulerd.config import DEFAULT_CONFIG_PATH, SETTINGS, Setting, Settings, load_settings
from schedulerd.connection import connect, redact_url
from schedulerd.daemon import Scheduler
from schedulerd.errors import ConfigError, LocalRedisError, UnsupportedServerError
from schedulerd.localredis import LocalRedis, answers, local_url
from schedulerd.logs import configure_logging

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
    else:
        shown_default = str(default)
    unit = f" Unit: {setting.unit}." if setting.unit else ""
    return f"{setting.help}{unit} [env: {setting.env_var}; default: {shown_default}]"


def settings_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per setting; none has a click default, so load_settings sees only what was given."""
    for setting in reversed(SETTINGS):
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
        return load_settings(config_path=config_path, flags=flags)
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
    """Schedule the given queues until SIGTERM or SIGINT, then release every lease and exit 0."""
    settings = _load(config_path, flags)
    configure_logging(settings.log_format, settings.log_level)

    local_redis: LocalRedis | None = None
    url = settings.redis_url
    if url is None:
        url = local_url()
        if not answers(url):
            try:
                local_redis = LocalRedis.start()
            except LocalRedisError as error:
                log.critical("local_redis_failed", error=str(error))
                sys.exit(EXIT_FAILURE)

    scheduler = Scheduler(settings.queues, connect(url), settings=settings)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        scheduler.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        scheduler.run()
    except UnsupportedServerError as error:
        log.critical("redis_unsupported", error=str(error), redis=redact_url(url))
        sys.exit(EXIT_USAGE)
    finally:
        if local_redis is not None:
            local_redis.stop()
    sys.exit(EXIT_OK)


@main.command(epilog=EXIT_CODES_HELP)
@settings_options
def check(config_path: Path | None, **flags: Any) -> None:
    """Validate the settings and reach Redis once, without scheduling anything."""
    settings = _load(config_path, flags)
    url = settings.redis_url or local_url()
    try:
        client = connect(url)
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
