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
        """Handle the scheduler reaching Redis and contesting its leases for the first time."""

    def iteration_finished(self, scheduler: Scheduler) -> None:
        """Handle the end of a loop iteration that had no Redis error."""

    def redis_failed(self, scheduler: Scheduler, error: Exception) -> None:
        """Handle a loop iteration that failed on a Redis error, after which the scheduler backs off."""

    def promote_finished(self, result: PromoteResult, duration_s: float) -> None:
        """Handle one promote call's result; ``duration_s`` is the round trip its pipeline shared."""

    def lease_changed(self, queue: str, event: str, reason: str | None = None) -> None:
        """Handle a lease "acquired", "lost" (reason taken, expired or fenced) or "released"."""

    def stopping(self, scheduler: Scheduler) -> None:
        """Handle the start of the step-down."""

    def stopped(self, scheduler: Scheduler) -> None:
        """Handle the end of the step-down, just before ``run()`` returns."""
