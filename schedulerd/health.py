"""The optional HTTP listener: /healthz, /readyz and Prometheus metrics on /metrics.

The listener is a standard-library ThreadingHTTPServer on its own threads. It learns about the
scheduler through observers, which run on the loop thread and only update counters under a
lock, and reads queue sizes from Redis at scrape time with a short timeout.
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from schedulerd import __version__
from schedulerd.config import parse_http_address
from schedulerd.connection import connect
from schedulerd.keys import Keys
from schedulerd.observer import Observer
from schedulerd.status import read_queue_counts

if TYPE_CHECKING:
    from schedulerd.daemon import Scheduler
    from schedulerd.promoter import PromoteResult

log = structlog.get_logger("schedulerd")

# /healthz fails when no loop iteration finished for this many poll intervals, and never sooner
# than MIN_STALE_AFTER_S, so a short poll interval does not make a slow Redis look like a hang.
STALE_AFTER_POLLS = 3
MIN_STALE_AFTER_S = 10.0
# Scrape-time reads and the /readyz PING give up after this long, so a stalled Redis cannot
# hold a probe past Kubernetes' default 1 s probe timeout by much.
REDIS_PROBE_TIMEOUT_S = 1.0
# RQ scores are whole seconds, so lateness below 1 s is normal; the buckets still reach 1 ms
# for producers that schedule with sub-second scores.
LATENESS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CALL_DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A client that stops sending mid-request frees its handler thread after this long.
REQUEST_TIMEOUT_S = 10.0


def probe_client(url: str) -> Redis:
    """Return a client for scrape-time reads: short timeouts and no retries."""
    return connect(url, timeout_s=REDIS_PROBE_TIMEOUT_S, retries=0)


class LoopHealth(Observer):
    """Whether the main loop is alive and reaching Redis, and which leases it holds."""

    def __init__(self, poll_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = max(STALE_AFTER_POLLS * poll_interval_s, MIN_STALE_AFTER_S)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_success_at: float | None = None
        self._last_error: str | None = None
        self._held: set[str] = set()

    def iteration_finished(self, scheduler: Scheduler) -> None:
        with self._lock:
            self._last_success_at = self._clock()
            self._last_error = None

    def redis_failed(self, scheduler: Scheduler, error: Exception) -> None:
        with self._lock:
            self._last_error = str(error) or type(error).__name__

    def lease_changed(self, queue: str, event: str, reason: str | None = None) -> None:
        with self._lock:
            if event == "acquired":
                self._held.add(queue)
            else:
                self._held.discard(queue)

    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Return (healthy, details) for /healthz."""
        with self._lock:
            last_success_at, last_error = self._last_success_at, self._last_error
        if last_error is not None:
            return False, {"reason": "the last loop iteration failed on a Redis error", "error": last_error}
        if last_success_at is None:
            return False, {"reason": "no loop iteration has finished yet"}
        age_s = round(self._clock() - last_success_at, 3)
        details = {"last_iteration_age_s": age_s, "limit_s": self.stale_after_s}
        if age_s > self.stale_after_s:
            return False, {"reason": "the loop has not finished an iteration within the limit", **details}
        return True, details


class SchedulerMetrics(Observer):
    """Counters and histograms fed by the scheduler's events."""

    def __init__(self, registry: CollectorRegistry, queues: tuple[str, ...]) -> None:
        self.promoted = Counter(
            "schedulerd_jobs_promoted", "Jobs moved from the scheduled set to the queue list.",
            ["queue"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "schedulerd_jobs_dropped", "Due ids removed from the scheduled set because their job hash was missing.",
            ["queue"], registry=registry,
        )  # fmt: skip
        self.quarantined = Counter(
            "schedulerd_jobs_quarantined", "Due ids moved to the quarantine set instead of the queue list.",
            ["queue", "reason"], registry=registry,
        )  # fmt: skip
        self.promote_errors = Counter(
            "schedulerd_promote_errors", "Promote calls that failed with a Redis error reply, such as WRONGTYPE.",
            ["queue"], registry=registry,
        )  # fmt: skip

        self.lateness = Histogram(
            "schedulerd_promotion_lateness_seconds",
            "Worst lateness of each promote call that moved jobs: server time minus the lowest due time it took.",
            buckets=LATENESS_BUCKETS_S, registry=registry,
        )  # fmt: skip
        self.call_duration = Histogram(
            "schedulerd_promote_call_duration_seconds",
            "Round trip of promote calls, one observation per queue; the queues of one pass share a pipeline.",
            buckets=CALL_DURATION_BUCKETS_S, registry=registry,
        )  # fmt: skip

        self.lease_events = Counter(
            "schedulerd_lease_events", "Lease changes of this instance: acquired, lost or released.",
            ["queue", "event"], registry=registry,
        )  # fmt: skip
        self.redis_errors = Counter(
            "schedulerd_redis_errors", "Loop iterations that failed on a Redis connection, timeout or busy error.",
            registry=registry,
        )  # fmt: skip

        build_info = Gauge("schedulerd_build_info", "Always 1; the label is the schedulerd version.",
                           ["version"], registry=registry)
        build_info.labels(__version__).set(1)

        # Series that exist from the start make rate() and absent() work before the first event.
        for queue in queues:
            self.promoted.labels(queue)
            self.dropped.labels(queue)

    def redis_failed(self, scheduler: Scheduler, error: Exception) -> None:
        self.redis_errors.inc()

    def promote_finished(self, result: PromoteResult, duration_s: float) -> None:
        self.call_duration.observe(duration_s)
        queue = result.queue
        if result.error is not None:
            self.promote_errors.labels(queue).inc()
            return
        if result.moved:
            self.promoted.labels(queue).inc(result.moved)
        if result.dropped:
            self.dropped.labels(queue).inc(result.dropped)
        for item in result.quarantined:
            self.quarantined.labels(queue, item.reason).inc()
        if result.moved and result.lateness_s is not None:
            self.lateness.observe(max(0.0, result.lateness_s))

    def lease_changed(self, queue: str, event: str, reason: str | None = None) -> None:
        self.lease_events.labels(queue, event).inc()


class QueueCollector(Collector):
    """Scrape-time gauges: lease held per queue from the loop's events, and queue sizes read from Redis."""

    def __init__(self, scheduler: Scheduler, health: LoopHealth, client: Redis, keys: Keys) -> None:
        self._scheduler = scheduler
        self._health = health
        self._client = client
        self._keys = keys

    def describe(self) -> Iterator[Metric]:
        # Describing without samples keeps registration from reading Redis.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        queues = self._scheduler.queues
        held = self._health.held()
        lease_held, scheduled, due, overdue, redis_up = self._families()
        for queue in queues:
            lease_held.add_metric([queue], 1.0 if queue in held else 0.0)
        yield lease_held

        try:
            counts = read_queue_counts(self._client, self._keys, queues)
        except RedisError as error:
            log.debug("metrics_redis_read_failed", error=str(error))
            redis_up.add_metric([], 0.0)
            yield redis_up
            return
        for queue, queue_counts in counts.items():
            scheduled.add_metric([queue], queue_counts.scheduled)
            due.add_metric([queue], queue_counts.due)
            overdue.add_metric([queue], queue_counts.oldest_overdue_s or 0.0)
        redis_up.add_metric([], 1.0)
        yield from (scheduled, due, overdue, redis_up)

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("schedulerd_lease_held", "1 while this instance holds the queue's lease, else 0.",
                              labels=["queue"]),
            GaugeMetricFamily("schedulerd_scheduled_jobs", "Ids in the queue's scheduled set, read at scrape time.",
                              labels=["queue"]),
            GaugeMetricFamily("schedulerd_due_jobs", "Scheduled ids due now (score at or before the server time).",
                              labels=["queue"]),
            GaugeMetricFamily("schedulerd_oldest_overdue_seconds",
                              "Server time minus the lowest due score; 0 when nothing is due.", labels=["queue"]),
            GaugeMetricFamily("schedulerd_redis_up", "1 when this scrape's Redis reads succeeded, else 0.",
                              labels=[]),
        )


class HealthServer:
    """The HTTP listener. It binds in the constructor, so a bad address fails before daemonizing."""

    def __init__(self, address: str) -> None:
        host, port = parse_http_address(address)
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        server_class = type("_HTTPServer", (_HTTPServer,), {"address_family": family})
        self._server: _HTTPServer = server_class(sockaddr[:2], _Handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port; the port differs from the configured one when that was 0."""
        host, port = self._server.socket.getsockname()[:2]
        return str(host), int(port)

    def fileno(self) -> int:
        return self._server.fileno()

    def start(self, scheduler: Scheduler, health: LoopHealth, registry: CollectorRegistry, client: Redis) -> None:
        """Serve on a daemon thread; call after daemonizing, because threads do not survive fork()."""
        self._server.app = _App(scheduler, health, registry, client)
        self._thread = threading.Thread(target=self._server.serve_forever, name="schedulerd-http", daemon=True)
        self._thread.start()
        host, port = self.address
        log.info("http_listening", host=host, port=port, paths=["/healthz", "/readyz", "/metrics"])

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5.0)
        self._server.server_close()


def build_metrics(scheduler: Scheduler, health: LoopHealth, client: Redis) -> tuple[CollectorRegistry, SchedulerMetrics]:
    """Create this process's own registry (never prometheus_client's global one) and fill it."""
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry, scheduler.queues)
    registry.register(QueueCollector(scheduler, health, client, Keys(scheduler.settings.key_prefix)))
    ProcessCollector(registry=registry)
    return registry, metrics


class _App:
    """The three endpoints, as (status, content type, body)."""

    def __init__(self, scheduler: Scheduler, health: LoopHealth, registry: CollectorRegistry, client: Redis) -> None:
        self._scheduler = scheduler
        self._health = health
        self._registry = registry
        self._client = client

    def handle(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            healthy, details = self._health.check()
            return _json(200 if healthy else 503, {"status": "ok" if healthy else "failing", **details})
        if path == "/readyz":
            return self._readyz()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return _json(404, {"status": "not found", "paths": ["/healthz", "/readyz", "/metrics"]})

    def _readyz(self) -> tuple[int, str, bytes]:
        if not self._scheduler.is_ready:
            return _json(503, {"status": "not ready", "reason": "the scheduler has not contested its leases yet"})
        try:
            self._client.ping()
        except RedisError as error:
            return _json(503, {"status": "not ready", "reason": "Redis is unreachable", "error": str(error)})
        return _json(200, {"status": "ready", "leading": sorted(self._health.held())})


def _json(status: int, document: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(document) + "\n").encode()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: _App | None = None

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host's FQDN, a DNS lookup the listener never uses.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver calls this from inside its except block, so the exception is still current.
        log.error("http_request_failed", client=client_address[0], exc_info=sys.exc_info())


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = REQUEST_TIMEOUT_S
    server_version = f"schedulerd/{__version__}"

    def do_GET(self) -> None:
        self._respond(include_body=True)

    def do_HEAD(self) -> None:
        self._respond(include_body=False)

    def _respond(self, include_body: bool) -> None:
        app = self.server.app
        if app is None:
            status, content_type, body = _json(503, {"status": "starting"})
        else:
            status, content_type, body = app.handle(self.path.split("?", 1)[0])
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes arrive every few seconds; the access log stays at DEBUG.
        log.debug("http_request", client=self.client_address[0], request=format % args)
