"""The interface through which health checks, metrics and sd_notify follow the scheduler.

Every method runs on the scheduler's loop thread, so an observer must return quickly and
must not raise; the base class does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schedulerd.daemon import Scheduler
    from schedulerd.promoter import PromoteResult


class Observer:
    """No-op base; subclasses override what they need."""

    def ready(self, scheduler: Scheduler) -> None:
        """The scheduler reached Redis and contested its leases for the first time."""

    def iteration_finished(self, scheduler: Scheduler) -> None:
        """One loop iteration finished without a Redis error."""

    def redis_failed(self, scheduler: Scheduler, error: Exception) -> None:
        """A loop iteration failed on a Redis error; the scheduler backs off and retries."""

    def promote_finished(self, result: PromoteResult, duration_s: float) -> None:
        """One promote call returned (``duration_s`` is the round trip shared by its pipeline)."""

    def lease_changed(self, queue: str, event: str, reason: str | None = None) -> None:
        """A lease was "acquired", "lost" (with a reason: taken, expired, fenced) or "released"."""

    def stopping(self, scheduler: Scheduler) -> None:
        """The scheduler began to step down."""

    def stopped(self, scheduler: Scheduler) -> None:
        """The scheduler stepped down and ``run()`` is about to return."""
