"""The scheduler: leases and promote calls per queue, their timing, and an orderly stop."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import structlog
from redis import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schedulerd.balance import Member, Membership, assign_leaders
from schedulerd.config import Settings, validate
from schedulerd.connection import DEFAULT_REDIS_URL, connect, redact_url
from schedulerd.discovery import QueueSelector
from schedulerd.errors import UnsupportedServerError
from schedulerd.handoff import HandoffListener, expiry_events_enabled
from schedulerd.keys import Keys
from schedulerd.lease import Leases
from schedulerd.observer import Observer
from schedulerd.promoter import Promoter, PromoteResult

log = structlog.get_logger("schedulerd")

# Backoff between attempts while Redis is unreachable: doubles from the first value up to the cap.
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0
# Redis 5.0 is the first to replicate scripts by effects by default, which promote_due.lua
# relies on (it reads TIME before writing).
MIN_REDIS_VERSION = (5, 0, 0)
SAFE_EVICTION_POLICIES = ("noeviction",)
# Promotions are summed per queue and logged at INFO at most this often; each call is at DEBUG.
PROMOTION_LOG_INTERVAL_S = 10.0
# With balance on, a queue handed over to another member and still without a leader after this
# many renew intervals is contested by everyone again.
HANDOVER_GRACE_RENEWALS = 3
# Maximum time between two keyspace scans for scheduled sets matching a queue pattern.
SCAN_INTERVAL_S = 60.0


def _own_client(connection: Redis) -> Redis:
    """Return a client on the same server that returns bytes, whatever ``connection`` decodes."""
    pool = connection.connection_pool
    kwargs = dict(pool.connection_kwargs)
    if not kwargs.get("decode_responses"):
        return connection
    kwargs["decode_responses"] = False
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))


class Scheduler:
    """Promote due RQ jobs of the given queues for as long as this instance holds their leases.

    ``run()`` blocks until ``stop()`` is called (from another thread or a signal handler), then
    steps down: the batch in flight finishes, every lease is released and the standbys are notified.
    """

    def __init__(
        self,
        queues: Iterable[str],
        connection: Redis | None = None,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_ready: Callable[[Scheduler], None] | None = None,
        observers: Iterable[Observer] = (),
        **overrides: object,
    ) -> None:
        base = settings if settings is not None else Settings(queues=())
        self.settings = replace(base, queues=tuple(queues), **overrides)  # type: ignore[arg-type]
        validate(self.settings)

        if connection is None:
            url = self.settings.redis_url or DEFAULT_REDIS_URL
            connection = connect(url)
        self._client = _own_client(connection)
        self._keys = Keys(self.settings.key_prefix)
        self._leases = Leases(self._client, self._keys, ttl_ms=int(self.settings.lease_ttl * 1000))
        self._promoter = Promoter(
            self._client, self._keys, self.settings.batch_size, self.settings.default_job_timeout
        )
        self._clock = clock
        self._on_ready = on_ready
        self._observers = list(observers)
        self._pending_queues: tuple[str, ...] | None = None
        self._reconfigure_lock = threading.Lock()

        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._contest_requested = threading.Event()
        self._next_contest_at = 0.0
        self._next_renew_at = 0.0
        self._unavailable_since: float | None = None
        self._failed_attempts = 0
        self._failing_queues: dict[str, str] = {}
        self._ready = False
        self._selector = QueueSelector(self.settings.queues, self._keys)
        self._active_queues: tuple[str, ...] = self._selector.literals
        self._next_discovery_at = 0.0
        self._next_scan_at = 0.0
        self._handoff = HandoffListener(self._client, self._keys, self._on_leases_free, self._on_wakeup)
        self._membership: Membership | None = None
        if self.settings.balance:
            self._membership = Membership(
                self._client, self._keys, self.token, self.settings.queues, self.settings.lease_ttl
            )
        self._members: list[Member] = []
        self._handover_deadlines: dict[str, float] = {}
        self._standby_for: set[str] = set()
        self._assignment_basis: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._assignment_cache: dict[str, str] = {}
        self._contest_all_requested = True
        self._promotion_totals: dict[str, _PromotionTotals] = {}
        self._next_promotion_log_at = 0.0

    @property
    def token(self) -> str:
        """This instance's lease token, the value of every lease key it holds."""
        return self._leases.token

    @property
    def leading(self) -> frozenset[str]:
        """Queues whose lease this instance holds now."""
        return frozenset(self._leases.held)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this instance schedules: literal names plus what its patterns matched so far."""
        return self._active_queues

    def stop(self) -> None:
        """Ask ``run()`` to step down and return; safe from any thread and from signal handlers."""
        self._stopping.set()
        self._wake.set()

    def request_contest(self) -> None:
        """Contest free leases on the next loop iteration instead of waiting for the interval."""
        self._contest_requested.set()
        self._wake.set()

    @property
    def is_ready(self) -> bool:
        """True once the scheduler reached Redis and contested its leases."""
        return self._ready

    def add_observer(self, observer: Observer) -> None:
        """Attach an observer; call before ``run()``."""
        self._observers.append(observer)

    def set_queues(self, queues: Iterable[str]) -> None:
        """Change the queues to schedule while running; safe from any thread and signal handlers.

        On the next loop iteration, leases of removed queues are released and added queues are
        contested at once.
        """
        new_queues = tuple(queues)
        validate(replace(self.settings, queues=new_queues))
        with self._reconfigure_lock:
            self._pending_queues = new_queues
        self.request_contest()

    def run(self) -> None:
        """Schedule until ``stop()``; raise UnsupportedServerError for a server it cannot use."""
        log.info(
            "daemon_started",
            queues=list(self.settings.queues),
            token=self.token,
            redis=self._describe_connection(),
            lease_ttl_s=self.settings.lease_ttl,
            renew_interval_s=self.settings.renew_interval,
            contest_interval_s=self.settings.contest_interval,
            poll_interval_s=self.settings.poll_interval,
            batch_size=self.settings.batch_size,
        )
        self._check_server_until_reachable()
        if not self._stopping.is_set():
            self._handoff.start()

        while not self._stopping.is_set():
            try:
                self._apply_pending_queues()
                delay_s = self._iterate()
                self._note_recovered()
                for observer in self._observers:
                    observer.iteration_finished(self)
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as error:
                # ResponseError here is BUSY, LOADING, READONLY after a failover or OOM: the
                # server responds but cannot serve us right now, so back off the same way.
                delay_s = self._note_unavailable(error)
                for observer in self._observers:
                    observer.redis_failed(self, error)
            self._wake.wait(max(delay_s, 0.0))
            self._wake.clear()

        for observer in self._observers:
            observer.stopping(self)
        self._step_down()
        for observer in self._observers:
            observer.stopped(self)

    def _apply_pending_queues(self) -> None:
        with self._reconfigure_lock:
            new_queues, self._pending_queues = self._pending_queues, None
        if new_queues is None or new_queues == self.settings.queues:
            return

        log.info("queues_changed", queues=list(new_queues), previous=list(self.settings.queues))
        self.settings = replace(self.settings, queues=new_queues)
        self._selector = QueueSelector(new_queues, self._keys)
        self._active_queues = self._selector.literals
        if self._membership is not None:
            self._membership = Membership(self._client, self._keys, self.token, new_queues, self.settings.lease_ttl)
        self._next_discovery_at = self._next_scan_at = 0.0
        self._discover_queues()
        removed = [queue for queue in self._leases.held if queue not in self._active_queues]
        for queue in self._leases.release(removed):
            log.info("lease_released", queue=queue)
            self._notify_lease_changed(queue, "released")
        self._contest_requested.set()

    # One loop iteration

    def _iterate(self) -> float:
        """Contest, renew and promote when their timers are due; return seconds until the next iteration."""
        self._discover_queues()
        now = self._clock()
        self._check_handovers(now)
        if now >= self._next_contest_at:
            self._contest_all_requested = True
        if self._contest_requested.is_set() or self._contest_all_requested:
            # Read and reset both before contesting: the handoff thread may set them again
            # meanwhile, and that request must survive for the next iteration.
            self._contest_requested.clear()
            contest_all, self._contest_all_requested = self._contest_all_requested, False
            if self._membership is not None:
                # A prompt usually means membership changed (a member left), so read it afresh.
                self._members = self._membership.refresh()
            self._contest(only_preferred=not contest_all)
            if contest_all:
                self._next_contest_at = now + self.settings.contest_interval
            if not self._ready:
                self._ready = True
                if self._on_ready is not None:
                    self._on_ready(self)
                for observer in self._observers:
                    observer.ready(self)

        if now >= self._next_renew_at:
            self._renew()

        wait_s = self._promote_pass()
        self._log_promotions()
        now = self._clock()
        return min(
            wait_s,
            self.settings.poll_interval,
            self._next_renew_at - now,
            self._next_contest_at - now,
        )

    def _discover_queues(self) -> None:
        """Resolve queue patterns at most once per poll interval; new queues are contested at once."""
        if not self._selector.dynamic:
            return
        now = self._clock()
        if now < self._next_discovery_at:
            return
        scan = now >= self._next_scan_at
        found = tuple(self._selector.discover(self._client, scan_scheduled_sets=scan))
        self._next_discovery_at = now + self.settings.poll_interval
        if scan:
            self._next_scan_at = now + min(self.settings.contest_interval, SCAN_INTERVAL_S)

        added = sorted(set(found) - set(self._active_queues))
        if added:
            # Patterns only ever add queues while running; a reload resets the set.
            self._active_queues = tuple(sorted(set(self._active_queues) | set(found)))
            log.info("queues_discovered", added=added, total=len(self._active_queues))
            self._contest_requested.set()

    def _contest(self, only_preferred: bool) -> None:
        """Try to acquire free leases; with balance on, ``only_preferred`` skips other members' queues.

        Prompted contests (after a step-down message) go to the preferred leader alone. The
        timed contest and the first one take any free queue, so a queue whose preferred leader
        is gone still gets a leader.
        """
        free = [queue for queue in self.queues if queue not in self._leases.held]
        if self._membership is not None and only_preferred:
            free = [queue for queue in free if self._prefers_me(queue)]
        if not free:
            return
        acquired = self._leases.contest(free)
        for queue in acquired:
            log.info("lease_acquired", queue=queue, token=self.token)
            self._notify_lease_changed(queue, "acquired")
        self._standby_for.difference_update(acquired)
        waiting = sorted(set(free) - set(acquired) - self._standby_for)
        if waiting:
            # Said once per queue, so an operator sees why a queue is not led by this instance.
            log.info(
                "standby",
                queues=waiting,
                next_contest_in_s=self.settings.contest_interval,
                detail="another scheduler holds these leases; this instance contests again when one is "
                "released, when one expires (with expiry events on), and on its contest interval",
            )
            self._standby_for.update(waiting)
        log.debug("leases_contested", contested=len(free), leading=len(self._leases.held))

    def _renew(self) -> None:
        outcome = self._leases.renew(self.queues)
        self._next_renew_at = self._clock() + self.settings.renew_interval
        if self._membership is not None:
            self._members = self._membership.refresh()
            self._hand_over_foreign_queues()
        for queue in outcome.taken:
            log.warning("lease_lost", queue=queue, reason="taken", detail="another scheduler holds the lease")
            self._notify_lease_changed(queue, "lost", "taken")
        for queue in outcome.expired:
            log.warning("lease_lost", queue=queue, reason="expired", detail="the lease expired before renewal")
            self._notify_lease_changed(queue, "lost", "expired")
        if outcome.expired:
            # The key is gone, so the lease is free: contest at once instead of leaving the
            # queue without a leader until the next contest interval.
            self._contest_all_requested = True

    # Balance

    def _prefers_me(self, queue: str) -> bool:
        preferred = self._assignment().get(queue)
        return preferred is None or preferred == self.token

    def _assignment(self) -> dict[str, str]:
        # Recomputed only when the members or the queues change, not on every call.
        basis = (tuple(member.token for member in self._members), self.queues)
        if basis != self._assignment_basis:
            self._assignment_basis = basis
            self._assignment_cache = assign_leaders(self.queues, self._members)
        return self._assignment_cache

    def _hand_over_foreign_queues(self) -> None:
        """Release held queues whose preferred leader is another live member, and tell it."""
        foreign = sorted(queue for queue in self._leases.held if not self._prefers_me(queue))
        if not foreign:
            return
        released = self._leases.release(foreign)
        if released:
            self._announce_released(released)
        deadline = self._clock() + HANDOVER_GRACE_RENEWALS * self.settings.renew_interval
        for queue in released:
            log.info("lease_handed_over", queue=queue, to=self._assignment().get(queue))
            self._notify_lease_changed(queue, "released")
            self._handover_deadlines[queue] = deadline

    def _check_handovers(self, now: float) -> None:
        # A member can be live in the members hash yet unable to contest (stalled, say). If a
        # queue handed over has no leader after the grace period, this instance contests every
        # free queue again, so the queue is led until the preferred member takes it.
        due = [queue for queue, deadline in self._handover_deadlines.items() if now >= deadline]
        for queue in due:
            del self._handover_deadlines[queue]
        if due:
            self._contest_all_requested = True

    def _announce_released(self, queues: list[str]) -> None:
        """Publish released queues, so standbys contest them at once."""
        self._client.publish(self._keys.handoff_channel(), json.dumps(queues))

    def _notify_lease_changed(self, queue: str, event: str, reason: str | None = None) -> None:
        for observer in self._observers:
            observer.lease_changed(queue, event, reason)

    def _promote_pass(self) -> float:
        """Promote every led queue until nothing is due; return seconds until the next due job."""
        pending = sorted(self._leases.held)
        wake_at = self._clock() + self.settings.poll_interval
        while pending and not self._stopping.is_set():
            started_at = self._clock()
            results = self._promoter.promote(pending, self.token)
            duration_s = self._clock() - started_at
            pending = []
            for result in results:
                for observer in self._observers:
                    observer.promote_finished(result, duration_s)
                if self._handle_result(result):
                    pending.append(result.queue)
                elif result.next_due_s is not None and not result.fenced and result.error is None:
                    # Anchored at the call's start, not at the end of the pass: later calls and
                    # logging would otherwise delay the wake-up by their duration. Starting the
                    # count before the server read its clock can only wake the loop early,
                    # and an early pass finds nothing due and sleeps again.
                    wake_at = min(wake_at, started_at + result.next_due_s - result.now_s)

            if pending and self._clock() >= self._next_renew_at:
                # A long drain must not outlive the leases it runs under.
                self._renew()
                pending = [queue for queue in pending if queue in self._leases.held]
        return wake_at - self._clock()

    def _handle_result(self, result: PromoteResult) -> bool:
        """Log one promote call's outcome; return True when the queue still has ids due."""
        queue = result.queue
        if result.error is not None:
            if self._failing_queues.get(queue) != result.error:
                log.error("promote_failed", queue=queue, error=result.error)
                self._failing_queues[queue] = result.error
            return False
        if queue in self._failing_queues:
            del self._failing_queues[queue]
            log.info("promote_recovered", queue=queue)

        if result.fenced:
            self._leases.drop(queue)
            log.warning("lease_lost", queue=queue, reason="fenced", detail="a promote call found another token or none")
            self._notify_lease_changed(queue, "lost", "fenced")
            # The key may simply have expired; a contest takes it back if it is free.
            self._contest_all_requested = True
            return False

        for item in result.quarantined:
            log.warning(
                "job_quarantined",
                queue=queue,
                job_id=item.job_id.decode("utf-8", "backslashreplace"),
                reason=item.reason,
                quarantine_key=self._keys.quarantine(queue),
            )
        if result.dropped:
            log.warning("jobs_dropped", queue=queue, dropped=result.dropped, reason="job hash missing")
        if result.moved or result.limited:
            log.debug(
                "promote_call", queue=queue, moved=result.moved, rate_limited=result.limited, lateness_s=result.lateness_s
            )
            self._promotion_totals.setdefault(queue, _PromotionTotals()).add(result)
        return result.backlog_left

    def _log_promotions(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now < self._next_promotion_log_at:
            return
        self._next_promotion_log_at = now + PROMOTION_LOG_INTERVAL_S
        for queue, totals in sorted(self._promotion_totals.items()):
            log.info(
                "jobs_promoted",
                queue=queue,
                moved=totals.moved,
                rate_limited=totals.limited,
                max_lateness_s=totals.max_lateness_s,
            )
        self._promotion_totals.clear()

    # Redis availability

    def _note_unavailable(self, error: RedisError) -> float:
        self._failed_attempts += 1
        # Leases may have expired meanwhile; renew first thing after recovery.
        self._next_renew_at = 0.0
        if self._unavailable_since is None:
            self._unavailable_since = self._clock()
            log.warning("redis_unavailable", error=str(error), redis=self._describe_connection())
        else:
            log.debug("redis_retry", error=str(error), attempt=self._failed_attempts)
        return min(RETRY_CAP_S, RETRY_FIRST_S * 2.0 ** (self._failed_attempts - 1))

    def _note_recovered(self) -> None:
        if self._unavailable_since is not None:
            log.info("redis_recovered", down_s=round(self._clock() - self._unavailable_since, 3))
            # Leases may have expired during the outage, and their expiry events were missed.
            self._contest_all_requested = True
        self._unavailable_since = None
        self._failed_attempts = 0

    def _check_server_until_reachable(self) -> None:
        while not self._stopping.is_set():
            try:
                self._check_server()
            except (RedisConnectionError, RedisTimeoutError) as error:
                self._wake.wait(self._note_unavailable(error))
                self._wake.clear()
                continue
            self._note_recovered()
            return

    def _check_server(self) -> None:
        """Reject servers the daemon cannot use safely, and warn about risky settings."""
        try:
            info = self._client.info("server")
            cluster = self._client.info("cluster")
        except NoPermissionError as error:
            log.warning(
                "server_checks_skipped",
                error=str(error),
                detail="INFO is not allowed, so the Redis version and Cluster mode are not checked",
            )
            self._log_failover_paths()
            return
        version = tuple(int(part) for part in str(info.get("redis_version", "0.0.0")).split(".")[:3])
        if version < MIN_REDIS_VERSION:
            raise UnsupportedServerError(
                f"Redis {info.get('redis_version')} is too old: schedulerd needs Redis 5.0 or newer; upgrade the server"
            )

        if cluster.get("cluster_enabled") in (1, "1"):
            raise UnsupportedServerError(
                "Redis Cluster is not supported: a queue's scheduled set and its queue list hash to "
                "different slots, so a job cannot move between them atomically; point schedulerd at "
                "a standalone or Sentinel-managed Redis"
            )

        try:
            reply: dict[Any, Any] = self._client.config_get("maxmemory-policy")
            policy = reply.get(b"maxmemory-policy", reply.get("maxmemory-policy"))
        except ResponseError:
            # CONFIG is often disabled on managed Redis; the check is advice only.
            policy = None
        if isinstance(policy, bytes):
            policy = policy.decode()
        if policy is not None and policy not in SAFE_EVICTION_POLICIES:
            log.warning(
                "eviction_policy_unsafe",
                maxmemory_policy=policy,
                detail="Redis may evict scheduled sets, job hashes or leases under memory pressure; "
                "set maxmemory-policy noeviction",
            )
        log.info("redis_connected", redis_version=info.get("redis_version"))
        self._log_failover_paths()

    # Standbys hear about free leases

    def _on_leases_free(self, queues: list[str], cause: str) -> None:
        if not any(self._selector.matches(queue) and queue not in self._leases.held for queue in queues):
            return
        # A pattern may match a queue that discovery has not seen yet.
        self._next_discovery_at = 0.0
        if cause == "expired":
            # A crashed member can still look live in the members hash for a moment. With balance
            # on, every standby therefore contests, and the next renewal hands the queue on if needed.
            self._contest_all_requested = True
        self.request_contest()

    def _on_wakeup(self, queue: str) -> None:
        if queue in self._leases.held:
            self._wake.set()

    def _log_failover_paths(self) -> None:
        expiry = expiry_events_enabled(self._client)
        if expiry:
            crash_worst_s = self.settings.lease_ttl + 1.0
        else:
            crash_worst_s = self.settings.lease_ttl + self.settings.contest_interval
        log.info(
            "failover_paths",
            step_down="immediate: standbys hear the release on " + self._keys.handoff_channel(),
            expiry_events={True: "enabled", False: "disabled", None: "unknown (CONFIG not allowed)"}[expiry],
            crash_failover_worst_s=crash_worst_s,
            detail=(
                "after a crash, standbys contest when the lease key expires"
                if expiry
                else "after a crash, standbys contest on their contest interval once the lease expires; "
                "notify-keyspace-events Ex on the server makes them contest at expiry"
            ),
        )

    # Stopping

    def _step_down(self) -> None:
        """Release every lease, tell the standbys, remove the info hash; Redis errors are logged."""
        self._log_promotions(force=True)
        if self._unavailable_since is None:
            self._release_everything()
        else:
            # Each command would first wait for its socket timeout, so a stop could outlast the
            # service manager's stop timeout. The leases expire on their own.
            log.error(
                "step_down_failed",
                error="Redis is unavailable",
                detail=f"leases expire within {self.settings.lease_ttl} s",
            )
        self._handoff.stop()
        log.info("daemon_stopped", token=self.token)

    def _release_everything(self) -> None:
        """Leave the members hash, release every lease, announce it and remove the info hash."""
        try:
            if self._membership is not None:
                # Leave first, so the standbys that hear the release no longer prefer this instance.
                self._membership.leave()
            held = sorted(self._leases.held)
            released = self._leases.release()
            for queue in released:
                log.info("lease_released", queue=queue)
                self._notify_lease_changed(queue, "released")
            if held:
                # Every queue held, not only those the release reported: when the reply to a
                # release was lost and the retry found the key gone, the standbys must still hear.
                self._announce_released(held)
            self._leases.delete_info()
        except RedisError as error:
            # The leases expire on their own after the lease TTL.
            log.error(
                "step_down_failed",
                error=str(error),
                detail=f"leases expire within {self.settings.lease_ttl} s",
            )

    def _describe_connection(self) -> str:
        pool = self._client.connection_pool
        service = getattr(pool, "service_name", None)
        if service is not None:
            return f"sentinel service {service}, db {pool.connection_kwargs.get('db', 0)}"
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}/{kwargs.get('db', 0)}"
        scheme = "rediss" if "ssl" in str(self._client.connection_pool.connection_class).lower() else "redis"
        return redact_url(f"{scheme}://{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}")


class _PromotionTotals:
    """Jobs promoted for one queue since the last jobs_promoted log line."""

    def __init__(self) -> None:
        self.moved = 0
        self.limited = 0
        self.max_lateness_s = 0.0

    def add(self, result: PromoteResult) -> None:
        self.moved += result.moved
        self.limited += result.limited
        # A score of -inf gives an infinite lateness, which JSON cannot carry; such ids are
        # reported by the promotion count alone.
        if result.lateness_s is not None and math.isfinite(result.lateness_s):
            self.max_lateness_s = max(self.max_lateness_s, round(result.lateness_s, 6))
