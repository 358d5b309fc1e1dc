"""Per-queue leases: acquire, renew and release, always by this instance's token."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from redis import Redis

from schedulerd.keys import Keys
from schedulerd.scripts import ACQUIRE_LEASES, RELEASE_LEASES, RENEW_LEASES, raise_if_error, run_script

RQ_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def new_token() -> str:
    """Return a random lease token of digits only.

    RQ 1.13 to 2.9 read a lease value with int() (Queue.scheduler_pid), and RQ 2.10+ use it as a
    scheduler name, so a positive 63-bit integer suits both and is unique in practice.
    """
    return str(secrets.randbelow(2**63 - 1) + 1)


def utc_timestamp(moment: datetime) -> str:
    """Format a datetime the way RQ stores one: UTC, six-digit microseconds, literal Z."""
    return moment.astimezone(timezone.utc).strftime(RQ_TIMESTAMP_FORMAT)


@dataclass(frozen=True)
class RenewOutcome:
    renewed: tuple[str, ...]
    taken: tuple[str, ...]
    """Queues whose lease now holds another token: another scheduler leads them."""
    expired: tuple[str, ...]
    """Queues whose lease key no longer exists: they have no leader until the next contest."""


@dataclass
class Leases:
    """The leases one instance holds, one per queue, all under the same token."""

    client: Redis
    keys: Keys
    ttl_ms: int
    token: str = field(default_factory=new_token)
    held: set[str] = field(default_factory=set)
    hostname: str = field(default_factory=socket.gethostname)
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def contest(self, queues: Iterable[str]) -> list[str]:
        """Try to acquire each free lease among ``queues``; return the queues acquired."""
        candidates = [queue for queue in queues if queue not in self.held]
        if not candidates:
            return []

        keys = [self.keys.lease(queue) for queue in candidates]
        outcomes = raise_if_error(run_script(self.client, ACQUIRE_LEASES, [(keys, [self.token, self.ttl_ms])])[0])
        acquired = [queue for queue, outcome in zip(candidates, outcomes) if outcome == 1]
        self.held.update(acquired)
        return acquired

    def renew(self, configured_queues: Sequence[str]) -> RenewOutcome:
        """Extend every held lease by compare-and-extend and refresh the holder's info hash.

        A lease that holds another token or has expired is dropped from ``held`` at once, so
        the caller stops promoting its queue.
        """
        queues = sorted(self.held)
        keys = [self.keys.scheduler_info(self.token)] + [self.keys.lease(queue) for queue in queues]
        args: list[str | int] = [self.token, self.ttl_ms, *self._info_fields(configured_queues)]
        outcomes = raise_if_error(run_script(self.client, RENEW_LEASES, [(keys, args)])[0])

        renewed, taken, expired = [], [], []
        for queue, outcome in zip(queues, outcomes):
            if outcome == 1:
                renewed.append(queue)
            elif outcome == 0:
                taken.append(queue)
            else:
                expired.append(queue)
        self.held.difference_update(taken)
        self.held.difference_update(expired)
        return RenewOutcome(tuple(renewed), tuple(taken), tuple(expired))

    def release(self, queues: Iterable[str] | None = None) -> list[str]:
        """Delete the given held leases (all when None) by compare-and-delete; return those released."""
        targets = sorted(self.held if queues is None else set(queues) & self.held)
        if not targets:
            return []

        keys = [self.keys.lease(queue) for queue in targets]
        outcomes = raise_if_error(run_script(self.client, RELEASE_LEASES, [(keys, [self.token])])[0])
        self.held.difference_update(targets)
        return [queue for queue, outcome in zip(targets, outcomes) if outcome == 1]

    def drop(self, queue: str) -> None:
        """Forget a lease the caller learned is lost (for example from a fenced promote call)."""
        self.held.discard(queue)

    def delete_info(self) -> None:
        self.client.delete(self.keys.scheduler_info(self.token))

    def _info_fields(self, configured_queues: Sequence[str]) -> list[str]:
        # The same fields and formats as RQ 2.10+'s scheduler hash, so RQ's own
        # introspection (Queue.scheduler_pid, RQScheduler.fetch) can read it.
        fields = {
            "name": self.token,
            "hostname": self.hostname,
            "pid": str(os.getpid()),
            "queues": ",".join(configured_queues),
            "created_at": utc_timestamp(self.created_at),
            "last_heartbeat": utc_timestamp(datetime.now(timezone.utc)),
        }
        return [item for pair in fields.items() for item in pair]
