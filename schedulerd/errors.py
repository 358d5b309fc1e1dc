"""The exception hierarchy: one base, subclasses named for the decision a caller makes."""

from __future__ import annotations


class SchedulerdError(Exception):
    """Base of every exception schedulerd raises on purpose."""


class ConfigError(SchedulerdError):
    """A setting is invalid; the message names it, its source, the value and the fix. Exit code 2."""


class UnsupportedServerError(SchedulerdError):
    """The Redis server cannot host schedulerd safely (for example Redis Cluster). Exit code 2."""


class LocalRedisError(SchedulerdError):
    """The local development Redis could not be started. Exit code 1."""
