"""Queue selection: literal queue names, and glob patterns matched against the queues RQ lists."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from redis import Redis

from schedulerd.keys import Keys

GLOB_CHARACTERS = frozenset("*?[")
# SCAN walks the whole keyspace, so it runs seldom; rq:queues is read on every discovery.
SCAN_COUNT = 1000


def is_pattern(spec: str) -> bool:
    return any(character in GLOB_CHARACTERS for character in spec)


class QueueSelector:
    """Resolve queue specs (names and glob patterns such as ``*`` or ``reports-*``) to queue names.

    Patterns match queues RQ lists in rq:queues (every RQ producer adds its queue there when
    it schedules a job) and, on a full discovery, queues that only have a scheduled set.
    """

    def __init__(self, specs: Iterable[str], keys: Keys) -> None:
        specs = tuple(specs)
        self.literals = tuple(spec for spec in specs if not is_pattern(spec))
        self.patterns = tuple(spec for spec in specs if is_pattern(spec))
        self._keys = keys

    @property
    def dynamic(self) -> bool:
        return bool(self.patterns)

    def matches(self, queue: str) -> bool:
        return queue in self.literals or any(fnmatchcase(queue, pattern) for pattern in self.patterns)

    def discover(self, client: Redis, scan_scheduled_sets: bool) -> list[str]:
        """Return the literal names plus every known queue a pattern matches, sorted."""
        found = set(self.literals)
        if not self.patterns:
            return sorted(found)

        for member in client.smembers(self._keys.queues_set()):
            name = self._keys.queue_name_from_list(_text(member))
            if name is not None and self.matches(name):
                found.add(name)

        if scan_scheduled_sets:
            match = self._keys.scheduled_set("*")
            # No TYPE filter: SCAN takes it only from Redis 6.0. A key of another type under
            # this name shows up later as promote_failed for that queue.
            for key in client.scan_iter(match=match, count=SCAN_COUNT):
                name = self._keys.queue_name_from_scheduled_set(_text(key))
                if name is not None and self.matches(name):
                    found.add(name)
        return sorted(found)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
