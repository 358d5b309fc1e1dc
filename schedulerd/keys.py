"""Redis key names: RQ's own keys and the few schedulerd adds. Nothing else spells a key."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "rq"


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (RQ's default is ``rq``; RQ 3.0 reads RQ_KEY_PREFIX)."""

    prefix: str = DEFAULT_PREFIX

    def scheduled_set(self, queue: str) -> str:
        return f"{self.prefix}:scheduled:{queue}"

    def queue_list(self, queue: str) -> str:
        return f"{self.prefix}:queue:{queue}"

    def queues_set(self) -> str:
        return f"{self.prefix}:queues"

    def lease(self, queue: str) -> str:
        # RQ's built-in scheduler takes the same key, so the two exclude each other.
        return f"{self.prefix}:scheduler-lock:{queue}"

    def scheduler_info(self, token: str) -> str:
        # RQ 2.10+ looks up the holder of a lease here to find its pid.
        return f"{self.prefix}:scheduler:{token}"

    def job_prefix(self) -> str:
        return f"{self.prefix}:job:"

    def job_hash(self, job_id: str) -> str:
        return f"{self.job_prefix()}{job_id}"

    def quarantine(self, queue: str) -> str:
        return f"{self.prefix}:schedulerd:quarantine:{queue}"

    def handoff_channel(self) -> str:
        # Published when a leader steps down, so standbys contest at once.
        return f"{self.prefix}:schedulerd:released"

    def members(self) -> str:
        # Hash of token -> JSON {queues, expires_at} of instances running with balance on.
        return f"{self.prefix}:schedulerd:members"

    def wakeup_channel(self) -> str:
        # Published by schedulerd.producer after scheduling a job, so the leader recomputes
        # its next wake-up at once instead of at its next poll.
        return f"{self.prefix}:schedulerd:wakeup"

    def queue_name_from_list(self, key: str) -> str | None:
        """Return the queue name of a queue list key, or None for a key of another kind."""
        prefix = f"{self.prefix}:queue:"
        if key.startswith(prefix):
            return key[len(prefix):]
        return None

    def queue_name_from_scheduled_set(self, key: str) -> str | None:
        prefix = f"{self.prefix}:scheduled:"
        if key.startswith(prefix):
            return key[len(prefix):]
        return None
