"""Wake-ups from Redis pub/sub: step-down messages, lease-expiry events and new-job notices.

A standby normally contests free leases every contest interval. Two messages let it contest
at once instead: the JSON list of queues a stepping-down leader publishes, and, when the
server has keyspace notifications for expired keys enabled (notify-keyspace-events with E
and x), the expiry of a lease key after a leader crashed. A third message, published by
schedulerd.producer with a queue name, tells a leader a job with a sub-second due time was
scheduled, so it recomputes its next wake-up.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import structlog
from redis import Redis
from redis.client import PubSub
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from schedulerd.keys import Keys

log = structlog.get_logger("schedulerd")

RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0
# How long one wait for a message lasts; a stop request is noticed within this time.
POLL_TIMEOUT_S = 0.2


def expiry_events_enabled(client: Redis) -> bool | None:
    """Return whether the server publishes expired-key events; None when CONFIG is not allowed."""
    try:
        reply = client.config_get("notify-keyspace-events")
    except ResponseError:
        return None
    raw = reply.get("notify-keyspace-events", reply.get(b"notify-keyspace-events", b""))  # type: ignore[call-overload]
    flags = raw.decode() if isinstance(raw, bytes) else str(raw)
    return "E" in flags and ("x" in flags or "A" in flags)


def expired_channel(client: Redis) -> str:
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return f"__keyevent@{db}__:expired"


class HandoffListener:
    """A thread that calls ``on_free(queues, cause)`` when leases of those queues become free.

    ``cause`` is "released" (a leader stepped down or handed over) or "expired" (a leader
    stopped renewing, most likely because it crashed).
    """

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        on_free: Callable[[list[str], str], None],
        on_wakeup: Callable[[str], None] = lambda queue: None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._on_free = on_free
        self._on_wakeup = on_wakeup
        self._wakeup_channel = keys.wakeup_channel().encode()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="schedulerd-handoff", daemon=True)
        self._released_channel = keys.handoff_channel().encode()
        self._lease_prefix = keys.lease("").encode()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _listen(self) -> None:
        attempts = 0
        refused: set[str] = set()
        while not self._stopping.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                self._subscribe(pubsub, refused)
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=POLL_TIMEOUT_S)
                    attempts = 0
                    if message is not None:
                        self._dispatch(message.get("channel"), message.get("data"))
            except RedisError as error:
                # The main loop logs the outage; this thread only retries quietly.
                attempts += 1
                log.debug("handoff_listener_retry", error=str(error), attempt=attempts)
                self._stopping.wait(min(RETRY_CAP_S, RETRY_FIRST_S * 2.0**attempts))
            finally:
                pubsub.close()

    def _subscribe(self, pubsub: PubSub, refused: set[str]) -> None:
        """Subscribe to each channel on its own, so an ACL that refuses one keeps the others."""
        channels = [self._released_channel, self._wakeup_channel, expired_channel(self._client).encode()]
        for channel in channels:
            try:
                pubsub.subscribe(channel)
                # The reply to SUBSCRIBE carries a permission error, if any.
                message = pubsub.get_message(timeout=POLL_TIMEOUT_S)
                if message is not None:
                    self._dispatch(message.get("channel"), message.get("data"))
            except NoPermissionError as error:
                name = channel.decode()
                if name not in refused:
                    refused.add(name)
                    log.warning("handoff_channel_refused", channel=name, error=str(error))

    def _dispatch(self, channel: object, data: object) -> None:
        try:
            self._handle(channel, data)
        except Exception as error:  # noqa: BLE001 - one bad message must not end the thread
            log.warning("handoff_message_ignored", channel=str(channel), error=repr(error)[:200])

    def _handle(self, channel: object, data: object) -> None:
        if not isinstance(data, bytes):
            return
        if channel == self._wakeup_channel:
            self._on_wakeup(data.decode("utf-8", "replace"))
        elif channel == self._released_channel:
            try:
                queues = [str(queue) for queue in json.loads(data)]
            except (ValueError, TypeError):
                log.debug("handoff_message_ignored", data=data[:100])
                return
            log.debug("handoff_heard", queues=queues, cause="released")
            self._on_free(queues, "released")
        elif data.startswith(self._lease_prefix):
            queue = data[len(self._lease_prefix):].decode("utf-8", "replace")
            log.debug("handoff_heard", queues=[queue], cause="expired")
            self._on_free([queue], "expired")
