"""Redis clients from URLs, and URLs made safe to log."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# A command blocked longer than this is treated as a lost connection. Promote calls take a
# few milliseconds, so this only fires on a stalled server or network.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ***, for logs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(url: str) -> Redis:
    """Create a client for ``url`` that returns bytes and retries a failed command once.

    The retry covers a connection the server closed while idle; longer outages surface as
    ConnectionError for the daemon's own backoff.
    """
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
    )
