"""Redis clients from URLs, and URLs made safe to log."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
# URL query arguments that carry a secret, masked in logs.
SECRET_ARGUMENTS = frozenset({"password", "sentinel_password"})
# A command blocked longer than this is treated as a lost connection. Promote calls take a
# few milliseconds, so this only fires on a stalled server or network.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SentinelURL:
    """redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=...]"""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a Sentinel URL; raise ValueError naming what is wrong."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SENTINEL_SCHEMES)}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")

    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user_part, has_password, password_part = credentials.partition(":")
        username = unquote(user_part) or None
        password = unquote(password_part) if has_password else None

    sentinels = []
    for address in netloc.split(","):
        address = address.strip()
        host, has_port, port = address.rpartition(":")
        if not has_port:
            host = address
        if not host:
            raise ValueError("every sentinel needs a host, as in host1:26379,host2:26379")
        try:
            number = int(port) if has_port else DEFAULT_SENTINEL_PORT
        except ValueError:
            number = 0
        if not 1 <= number <= 65535:
            raise ValueError(f"invalid sentinel port {port!r}: must be 1 to 65535")
        sentinels.append((host, number))

    parts = [part for part in path.split("/") if part]
    if not parts:
        raise ValueError("no service name: add the Sentinel master name as the path, as in /mymaster")
    db = 0
    if len(parts) > 1:
        try:
            db = int(parts[1])
        except ValueError:
            raise ValueError(f"invalid database number {parts[1]!r}") from None

    options = parse_qs(query)
    sentinel_password = options.get("sentinel_password", [None])[0]
    return SentinelURL(
        sentinels=tuple(sentinels),
        service=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
        tls=scheme == "rediss+sentinel",
    )


def redact_url(url: str) -> str:
    """Return ``url`` with every password replaced by ***, for logs and error messages.

    Covers the user-info part and the password and sentinel_password query arguments, which
    redis-py also reads. Everything up to the last @ counts as user info, so a password with
    an unencoded / # ? or @ is masked too.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "<unparseable URL>" if "@" in url or "password" in url else url
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        user, has_password, _ = credentials.partition(":")
        rest = f"{user}:***@{rest}" if has_password else f"{user}@{rest}"
    head, has_query, query = rest.partition("?")
    if has_query:
        query = "&".join(_redact_argument(item) for item in query.split("&"))
    return f"{scheme}://{head}" + (f"?{query}" if has_query else "")


def _redact_argument(item: str) -> str:
    name, has_value, _ = item.partition("=")
    if has_value and name.lower() in SECRET_ARGUMENTS:
        return f"{name}=***"
    return item


def _retry(retries: int) -> Retry:
    # One quick retry covers a connection the server closed while idle; longer outages
    # surface as ConnectionError for the daemon's own backoff.
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=retries)


def connect(url: str, timeout_s: float = SOCKET_TIMEOUT_S, retries: int = 1) -> Redis:
    """Create a client for ``url`` (redis://, rediss://, unix:// or a Sentinel URL) that returns bytes.

    ``timeout_s`` bounds connecting and each command; ``retries`` is how often a command that
    failed on a connection error is retried at once.
    """
    if url.partition("://")[0] in SENTINEL_SCHEMES:
        return _connect_sentinel(parse_sentinel_url(url), timeout_s, retries)
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, CONNECT_TIMEOUT_S),
        health_check_interval=30,
        retry=_retry(retries),
    )


def _connect_sentinel(parsed: SentinelURL, timeout_s: float, retries: int) -> Redis:
    # The client asks the sentinels for the current primary on every new connection, and
    # drops a connection that replies READONLY, so it follows a failover.
    sentinel_kwargs = {"socket_timeout": timeout_s, "socket_connect_timeout": min(timeout_s, CONNECT_TIMEOUT_S)}
    if parsed.sentinel_password is not None:
        sentinel_kwargs["password"] = parsed.sentinel_password  # type: ignore[assignment]
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    client: Redis = sentinel.master_for(
        parsed.service,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        decode_responses=False,
        socket_timeout=timeout_s,
        socket_connect_timeout=min(timeout_s, CONNECT_TIMEOUT_S),
        retry=_retry(retries),
    )
    return client
