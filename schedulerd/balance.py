"""Sharing queues evenly between instances: membership and rendezvous hashing.

With balance on, every instance records itself in the members hash with the queue specs it
schedules and an expiry time by the Redis server's clock. Each queue's preferred leader is the
live member, among those whose specs match the queue, with the highest hash of (token, queue)
(rendezvous hashing), capped so that no member takes more than its share. Every instance
computes the same owners from the same member list, and few queues move when a member joins
or leaves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis import Redis

from schedulerd.discovery import QueueSelector
from schedulerd.keys import Keys


@dataclass(frozen=True)
class Member:
    token: str
    selector: QueueSelector


def rendezvous_weight(token: str, queue: str) -> int:
    digest = hashlib.sha1(f"{token}\0{queue}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big")


def assign_leaders(queues: Iterable[str], members: Sequence[Member]) -> dict[str, str]:
    """Map each queue to the token of its preferred leader; queues no member schedules are left out.

    Rendezvous hashing with bounded load: each queue goes to the member with the highest
    weight for it that has not yet reached its share (queues / members, the remainder one each
    to the first members that fill up), so shares differ by at most one when every member
    schedules every queue. Every instance computes the same map from the same queues and
    members.
    """
    ordered = sorted(set(queues))
    if not members:
        return {}
    base_share, extra_shares = divmod(len(ordered), len(members))
    load = {member.token: 0 for member in members}

    assignment: dict[str, str] = {}
    for queue in ordered:
        candidates = [member.token for member in members if member.selector.matches(queue)]
        if not candidates:
            continue
        ranked = sorted(candidates, key=lambda token: rendezvous_weight(token, queue), reverse=True)
        chosen = next((token for token in ranked if load[token] < base_share), None)
        if chosen is None and extra_shares:
            # The remainder goes one queue each to the first members that reach the base share.
            chosen = next((token for token in ranked if load[token] == base_share), None)
            if chosen is not None:
                extra_shares -= 1
        if chosen is None:
            # Only when members schedule different queues: a member over its share beats none.
            chosen = ranked[0]
        load[chosen] += 1
        assignment[queue] = chosen
    return assignment


class Membership:
    """This instance's entry in the members hash, and the live members read back."""

    def __init__(self, client: Redis, keys: Keys, token: str, specs: Sequence[str], ttl_s: float) -> None:
        self._client = client
        self._keys = keys
        self._token = token
        self._specs = list(specs)
        self._ttl_s = ttl_s

    def refresh(self) -> list[Member]:
        """Write this instance's entry, drop expired ones, and return the live members."""
        seconds, microseconds = self._client.time()
        now_s = seconds + microseconds / 1e6
        entry = json.dumps({"queues": self._specs, "expires_at": now_s + self._ttl_s})
        key = self._keys.members()
        with self._client.pipeline(transaction=False) as pipe:
            pipe.hset(key, self._token, entry)
            pipe.hgetall(key)
            _, raw_members = pipe.execute()

        members, expired = [], []
        for raw_token, raw_entry in raw_members.items():
            token = raw_token.decode()
            try:
                data = json.loads(raw_entry)
                expires_at = float(data["expires_at"])
                specs = [str(spec) for spec in data["queues"]]
            except (ValueError, KeyError, TypeError):
                expired.append(raw_token)
                continue
            if expires_at < now_s:
                expired.append(raw_token)
            else:
                members.append(Member(token, QueueSelector(specs, self._keys)))
        if expired:
            self._client.hdel(key, *expired)
        return members

    def leave(self) -> None:
        self._client.hdel(self._keys.members(), self._token)
