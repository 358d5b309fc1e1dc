"""Per-queue leases against a real redis-server: acquire, renew and release by token."""

from __future__ import annotations

import pytest
from redis import Redis

from schedulerd.keys import Keys
from schedulerd.lease import Leases, new_token

KEYS = Keys()


@pytest.fixture
def client(redis_server) -> Redis:
    return redis_server.client()


def make_leases(client: Redis, ttl_ms: int = 10_000) -> Leases:
    return Leases(client, KEYS, ttl_ms=ttl_ms)


class TestToken:
    def test_token_is_digits_only(self):
        for _ in range(1000):
            token = new_token()
            assert token.isdigit()

    def test_token_parses_as_rq_pid(self):
        # RQ 1.13 to 2.9 read the lease value with int().
        assert 0 < int(new_token()) < 2**63

    def test_tokens_differ_between_instances(self):
        assert len({new_token() for _ in range(1000)}) == 1000


class TestAcquire:
    def test_free_lease_is_acquired_with_ttl(self, client):
        leases = make_leases(client)
        assert leases.contest(["default"]) == ["default"]
        assert client.get(KEYS.lease("default")) == leases.token.encode()
        assert 9_000 < client.pttl(KEYS.lease("default")) <= 10_000

    def test_held_lease_is_not_acquired(self, client):
        first, second = make_leases(client), make_leases(client)
        first.contest(["default"])
        assert second.contest(["default"]) == []
        assert second.held == set()

    def test_rq_lock_value_blocks_acquire(self, client):
        # RQ's built-in scheduler writes its pid (before 2.10) or a name (2.10+).
        client.set(KEYS.lease("default"), "4242", ex=61)
        assert make_leases(client).contest(["default"]) == []

    def test_reacquire_own_lease_extends_it(self, client):
        leases = make_leases(client)
        leases.contest(["default"])
        client.pexpire(KEYS.lease("default"), 500)
        leases.held.clear()
        assert leases.contest(["default"]) == ["default"]
        assert client.pttl(KEYS.lease("default")) > 9_000

    def test_contest_many_queues(self, client):
        client.set(KEYS.lease("b"), "1")
        leases = make_leases(client)
        assert leases.contest(["a", "b", "c"]) == ["a", "c"]
        assert leases.held == {"a", "c"}


class TestRenew:
    def test_renew_extends_held_lease(self, client):
        leases = make_leases(client)
        leases.contest(["default"])
        client.pexpire(KEYS.lease("default"), 1_000)
        outcome = leases.renew(["default"])
        assert outcome.renewed == ("default",)
        assert client.pttl(KEYS.lease("default")) > 9_000

    def test_renew_detects_takeover(self, client):
        leases = make_leases(client)
        leases.contest(["default"])
        client.set(KEYS.lease("default"), "777")
        outcome = leases.renew(["default"])
        assert outcome.taken == ("default",)
        assert leases.held == set()
        assert client.get(KEYS.lease("default")) == b"777"

    def test_renew_detects_expiry(self, client):
        leases = make_leases(client)
        leases.contest(["default"])
        client.delete(KEYS.lease("default"))
        outcome = leases.renew(["default"])
        assert outcome.expired == ("default",)
        assert leases.held == set()
        assert not client.exists(KEYS.lease("default"))

    def test_renew_writes_scheduler_info_hash(self, client):
        leases = make_leases(client)
        leases.contest(["default"])
        leases.renew(["default", "high"])
        info = client.hgetall(KEYS.scheduler_info(leases.token))
        assert info[b"name"] == leases.token.encode()
        assert info[b"queues"] == b"default,high"
        assert int(info[b"pid"]) > 0
        assert info[b"created_at"].endswith(b"Z")
        assert 9_000 < client.pttl(KEYS.scheduler_info(leases.token)) <= 10_000


class TestRelease:
    def test_release_deletes_own_lease(self, client):
        leases = make_leases(client)
        leases.contest(["default"])
        assert leases.release() == ["default"]
        assert not client.exists(KEYS.lease("default"))
        assert leases.held == set()

    def test_release_keeps_foreign_lease(self, client):
        leases = make_leases(client)
        leases.contest(["default"])
        client.set(KEYS.lease("default"), "555")
        assert leases.release() == []
        assert client.get(KEYS.lease("default")) == b"555"

    def test_release_with_nothing_held(self, client):
        assert make_leases(client).release() == []
