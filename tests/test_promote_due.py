"""promote_due.lua against a real redis-server: what moves, what stays, what is fenced."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from redis import Redis

from schedulerd.keys import Keys
from schedulerd.lease import Leases
from schedulerd.promoter import Promoter, PromoteResult

KEYS = Keys()
QUEUE = "default"
NOW = 1_800_000_000.0
RQ_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@pytest.fixture
def client(redis_server) -> Redis:
    return redis_server.client()


@pytest.fixture
def leases(client: Redis) -> Leases:
    leases = Leases(client, KEYS, ttl_ms=10_000)
    assert leases.contest([QUEUE, "other"]) == [QUEUE, "other"]
    return leases


def make_promoter(client: Redis, batch_size: int = 500, now: float | None = NOW) -> Promoter:
    return Promoter(client, KEYS, batch_size, 180, now_override="" if now is None else f"{now:.6f}")


def schedule(client: Redis, job_id: str | bytes, score: float, **fields: str) -> None:
    client.hset(KEYS.job_hash(job_id) if isinstance(job_id, str) else b"rq:job:" + job_id,
                mapping={"data": b"payload", "status": "scheduled", **fields})
    client.zadd(KEYS.scheduled_set(QUEUE), {job_id: score})


def promote(client: Redis, leases: Leases, **kwargs) -> PromoteResult:
    return make_promoter(client, **kwargs).promote([QUEUE], leases.token)[0]


def queue_ids(client: Redis) -> list[bytes]:
    return client.lrange(KEYS.queue_list(QUEUE), 0, -1)


class TestDueBoundary:
    def test_score_equal_to_now_is_due(self, client, leases):
        schedule(client, "exact", NOW)
        result = promote(client, leases)
        assert result.moved == 1
        assert queue_ids(client) == [b"exact"]

    def test_score_just_after_now_stays(self, client, leases):
        schedule(client, "later", NOW + 0.000001)
        result = promote(client, leases)
        assert result.moved == 0
        assert client.zscore(KEYS.scheduled_set(QUEUE), "later") == NOW + 0.000001

    def test_next_due_reports_lowest_remaining_score(self, client, leases):
        schedule(client, "later", NOW + 5)
        result = promote(client, leases)
        assert result.next_due_s == NOW + 5
        assert not result.backlog_left

    def test_empty_scheduled_set(self, client, leases):
        result = promote(client, leases)
        assert result.moved == 0
        assert result.next_due_s is None
        assert result.oldest_due_s is None
        assert not result.fenced

    def test_ids_move_in_score_order(self, client, leases):
        for job_id, score in [("c", NOW - 1), ("a", NOW - 3), ("b", NOW - 2)]:
            schedule(client, job_id, score)
        promote(client, leases)
        assert queue_ids(client) == [b"a", b"b", b"c"]

    def test_lateness_is_now_minus_oldest_score(self, client, leases):
        schedule(client, "old", NOW - 2.5)
        result = promote(client, leases)
        assert result.lateness_s == pytest.approx(2.5)

    def test_server_clock_used_without_override(self, client, leases):
        seconds, microseconds = client.time()
        server_now = seconds + microseconds / 1e6
        schedule(client, "past", server_now - 1)
        schedule(client, "future", server_now + 3600)
        result = promote(client, leases, now=None)
        assert result.moved == 1
        assert abs(result.now_s - server_now) < 5


class TestBatch:
    def test_batch_exactly_full_leaves_no_backlog(self, client, leases):
        for i in range(10):
            schedule(client, f"j{i}", NOW - 10 + i)
        result = promote(client, leases, batch_size=10)
        assert result.moved == 10
        assert not result.backlog_left

    def test_batch_overflow_reports_backlog(self, client, leases):
        for i in range(11):
            schedule(client, f"j{i}", NOW - 11 + i)
        result = promote(client, leases, batch_size=10)
        assert result.moved == 10
        assert result.backlog_left
        assert client.zcard(KEYS.scheduled_set(QUEUE)) == 1

    def test_second_call_drains_backlog(self, client, leases):
        for i in range(11):
            schedule(client, f"j{i}", NOW - 11 + i)
        promote(client, leases, batch_size=10)
        second = promote(client, leases, batch_size=10)
        assert second.moved == 1
        assert len(queue_ids(client)) == 11


class TestFencing:
    def test_foreign_token_touches_nothing(self, client, leases):
        schedule(client, "j", NOW - 1)
        client.set(KEYS.lease(QUEUE), "12345")
        result = promote(client, leases)
        assert result.fenced
        assert queue_ids(client) == []
        assert client.zcard(KEYS.scheduled_set(QUEUE)) == 1

    def test_token_changed_between_two_calls(self, client, leases):
        schedule(client, "first", NOW - 2)
        assert promote(client, leases).moved == 1

        client.set(KEYS.lease(QUEUE), "999")
        schedule(client, "second", NOW - 1)
        result = promote(client, leases)
        assert result.fenced
        assert queue_ids(client) == [b"first"]

    def test_missing_lease_is_fenced(self, client, leases):
        schedule(client, "j", NOW - 1)
        client.delete(KEYS.lease(QUEUE))
        assert promote(client, leases).fenced
        assert client.zcard(KEYS.scheduled_set(QUEUE)) == 1


class TestJobWrites:
    def test_status_origin_and_enqueued_at(self, client, leases):
        schedule(client, "j", NOW - 1)
        promote(client, leases)
        job = client.hgetall(KEYS.job_hash("j"))
        assert job[b"status"] == b"queued"
        assert job[b"origin"] == QUEUE.encode()
        assert job[b"enqueued_at"] == b"2027-01-15T08:00:00.000000Z"

    @pytest.mark.parametrize(
        "now",
        [0.0, 951782400.5, 951868799.999999, 4107542400.25, 1709164800.123456, 1735689599.0],
    )
    def test_enqueued_at_matches_python_formatting(self, client, leases, now):
        schedule(client, "j", 0)
        promote(client, leases, now=now)
        expected = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert client.hget(KEYS.job_hash("j"), "enqueued_at").decode() == expected

    def test_enqueued_at_format_from_server_clock(self, client, leases):
        schedule(client, "j", 0)
        promote(client, leases, now=None)
        assert RQ_TIMESTAMP.match(client.hget(KEYS.job_hash("j"), "enqueued_at").decode())

    def test_timeout_written_only_when_absent(self, client, leases):
        schedule(client, "without", NOW - 2)
        schedule(client, "with", NOW - 1, timeout="7")
        promote(client, leases)
        assert client.hget(KEYS.job_hash("without"), "timeout") == b"180"
        assert client.hget(KEYS.job_hash("with"), "timeout") == b"7"

    def test_data_and_meta_left_byte_for_byte(self, client, leases):
        schedule(client, "j", NOW - 1, meta="\x80\x04not-unpickled")
        client.hset(KEYS.job_hash("j"), "data", b"\x78\x9c\xff\x00binary")
        promote(client, leases)
        assert client.hget(KEYS.job_hash("j"), "data") == b"\x78\x9c\xff\x00binary"
        assert client.hget(KEYS.job_hash("j"), "meta") == "\x80\x04not-unpickled".encode()

    def test_queue_registered_in_queues_set(self, client, leases):
        schedule(client, "j", NOW - 1)
        promote(client, leases)
        assert client.smembers(KEYS.queues_set()) == {KEYS.queue_list(QUEUE).encode()}

    def test_ttl_expires_job_and_dependency_keys(self, client, leases):
        schedule(client, "j", NOW - 1, ttl="300")
        client.sadd("rq:job:j:dependents", "child")
        client.sadd("rq:job::j:dependencies", "parent")
        promote(client, leases)
        assert 290 < client.ttl("rq:job:j") <= 300
        assert 290 < client.ttl("rq:job:j:dependents") <= 300
        assert 290 < client.ttl("rq:job::j:dependencies") <= 300

    def test_no_ttl_leaves_job_persistent(self, client, leases):
        schedule(client, "j", NOW - 1)
        promote(client, leases)
        assert client.ttl("rq:job:j") == -1


class TestQueueEnd:
    def test_plain_job_goes_to_back(self, client, leases):
        client.rpush(KEYS.queue_list(QUEUE), "waiting")
        schedule(client, "j", NOW - 1)
        promote(client, leases)
        assert queue_ids(client) == [b"waiting", b"j"]

    def test_enqueue_at_front_goes_to_front(self, client, leases):
        client.rpush(KEYS.queue_list(QUEUE), "waiting")
        schedule(client, "j", NOW - 1, enqueue_at_front="1")
        promote(client, leases)
        assert queue_ids(client) == [b"j", b"waiting"]

    def test_enqueue_at_front_zero_goes_to_back(self, client, leases):
        client.rpush(KEYS.queue_list(QUEUE), "waiting")
        schedule(client, "j", NOW - 1, enqueue_at_front="0")
        promote(client, leases)
        assert queue_ids(client) == [b"waiting", b"j"]

    def test_front_on_retry_after_a_run(self, client, leases):
        client.rpush(KEYS.queue_list(QUEUE), "waiting")
        schedule(client, "j", NOW - 1, enqueue_at_front_on_retry="1", ended_at="2027-01-15T07:59:00.000000Z")
        promote(client, leases)
        assert queue_ids(client) == [b"j", b"waiting"]

    def test_front_on_retry_before_first_run(self, client, leases):
        client.rpush(KEYS.queue_list(QUEUE), "waiting")
        schedule(client, "j", NOW - 1, enqueue_at_front_on_retry="1", ended_at="")
        promote(client, leases)
        assert queue_ids(client) == [b"waiting", b"j"]


class TestBadData:
    def test_missing_job_hash_is_dropped(self, client, leases):
        client.zadd(KEYS.scheduled_set(QUEUE), {"ghost": NOW - 2})
        schedule(client, "real", NOW - 1)
        result = promote(client, leases)
        assert result.dropped == 1
        assert result.moved == 1
        assert queue_ids(client) == [b"real"]
        assert client.zcard(KEYS.scheduled_set(QUEUE)) == 0

    def test_hash_without_data_is_quarantined(self, client, leases):
        client.hset(KEYS.job_hash("nodata"), "status", "scheduled")
        client.zadd(KEYS.scheduled_set(QUEUE), {"nodata": NOW - 2})
        schedule(client, "real", NOW - 1)
        result = promote(client, leases)
        assert [(q.job_id, q.reason) for q in result.quarantined] == [(b"nodata", "no_data")]
        assert client.zscore(KEYS.quarantine(QUEUE), "nodata") == NOW - 2
        assert queue_ids(client) == [b"real"]

    def test_job_key_of_wrong_type_is_quarantined(self, client, leases):
        client.rpush(KEYS.job_hash("listjob"), "x")
        client.zadd(KEYS.scheduled_set(QUEUE), {"listjob": NOW - 2})
        schedule(client, "real", NOW - 1)
        result = promote(client, leases)
        assert [(q.job_id, q.reason) for q in result.quarantined] == [(b"listjob", "wrong_type")]
        assert client.type(KEYS.job_hash("listjob")) == b"list"
        assert queue_ids(client) == [b"real"]

    def test_batch_of_bad_ids_does_not_block_good_ones(self, client, leases):
        for i in range(20):
            client.zadd(KEYS.scheduled_set(QUEUE), {f"ghost{i}": NOW - 100 + i})
        schedule(client, "real", NOW - 1)
        first = promote(client, leases, batch_size=20)
        second = promote(client, leases, batch_size=20)
        assert first.dropped == 20
        assert first.backlog_left
        assert second.moved == 1

    def test_non_utf8_and_long_ids(self, client, leases):
        odd = b"\xff\xfe-not-utf8"
        long = "x" * 10_000
        schedule(client, odd, NOW - 2)
        schedule(client, long, NOW - 1)
        result = promote(client, leases)
        assert result.moved == 2
        assert queue_ids(client) == [odd, long.encode()]

    @pytest.mark.parametrize("score", [float("-inf"), -1.0, 0.0])
    def test_far_past_scores_are_due(self, client, leases, score):
        schedule(client, "j", score)
        assert promote(client, leases).moved == 1

    def test_infinite_future_score_never_due(self, client, leases):
        schedule(client, "j", float("inf"))
        result = promote(client, leases)
        assert result.moved == 0
        assert result.next_due_s == float("inf")

    def test_scheduled_set_of_wrong_type_reports_error(self, client, leases):
        client.set(KEYS.scheduled_set(QUEUE), "not a zset")
        client.hset(KEYS.job_hash("o"), "data", "x")
        client.zadd(KEYS.scheduled_set("other"), {"o": NOW - 1})
        bad, good = make_promoter(client).promote([QUEUE, "other"], leases.token)
        assert bad.error is not None and "WRONGTYPE" in bad.error
        assert good.moved == 1

    def test_queue_names_with_spaces_colons_unicode(self, client):
        leases = Leases(client, KEYS, ttl_ms=10_000)
        names = ["with space", "a:b:c", "队列"]
        leases.contest(names)
        for name in names:
            client.hset(KEYS.job_hash(f"job-{name}"), "data", "x")
            client.zadd(KEYS.scheduled_set(name), {f"job-{name}": NOW - 1})
        results = make_promoter(client).promote(names, leases.token)
        assert [r.moved for r in results] == [1, 1, 1]
        for name in names:
            assert client.lrange(KEYS.queue_list(name), 0, -1) == [f"job-{name}".encode()]
            assert client.hget(KEYS.job_hash(f"job-{name}"), "origin") == name.encode()


class TestRateLimit:
    """RQ 3.0 jobs with rate_limit_key and rate_limit_concurrency go through RQ's limiter."""

    def test_free_slot_pushes_job(self, client, leases):
        schedule(client, "limited", NOW - 1, rate_limit_key="api", rate_limit_concurrency="2")
        result = promote(client, leases)
        assert result.limited == 1
        assert result.moved == 0
        assert queue_ids(client) == [b"limited"]
        job = client.hgetall(KEYS.job_hash("limited"))
        assert job[b"status"] == b"queued"
        assert job[b"enqueued_at"] == b"2027-01-15T08:00:00.000000Z"
        assert client.zscore("rq:rl:api:allowed", "limited") == int(NOW)
        assert client.smembers("rq:rl-keys") == {b"api"}
        assert client.hget("rq:rl:api", "concurrency") == b"2"

    def test_full_limit_holds_job_back(self, client, leases):
        client.zadd("rq:rl:api:allowed", {"running-1": NOW - 60})
        schedule(client, "limited", NOW - 1, rate_limit_key="api", rate_limit_concurrency="1")
        result = promote(client, leases)
        assert result.limited == 1
        assert queue_ids(client) == []
        assert client.hget(KEYS.job_hash("limited"), "status") == b"rate_limited"
        assert client.zscore("rq:rl:api:rate_limited", "limited") == int(NOW)
        assert client.zcard(KEYS.scheduled_set(QUEUE)) == 0

    def test_waiting_jobs_fill_free_slots_oldest_first(self, client, leases):
        client.hset(KEYS.job_hash("waiting"), mapping={"origin": "other", "status": "rate_limited", "data": "x"})
        client.zadd("rq:rl:api:rate_limited", {"waiting": NOW - 30})
        schedule(client, "limited", NOW - 1, rate_limit_key="api", rate_limit_concurrency="1")
        promote(client, leases)
        assert client.lrange(KEYS.queue_list("other"), 0, -1) == [b"waiting"]
        assert queue_ids(client) == []
        assert client.hget(KEYS.job_hash("limited"), "status") == b"rate_limited"

    def test_front_flag_kept_for_limiter(self, client, leases):
        client.rpush(KEYS.queue_list(QUEUE), "already")
        schedule(client, "limited", NOW - 1, rate_limit_key="api", rate_limit_concurrency="1", enqueue_at_front="1")
        promote(client, leases)
        assert queue_ids(client) == [b"limited", b"already"]

    def test_zero_concurrency_is_not_rate_limited(self, client, leases):
        schedule(client, "plain", NOW - 1, rate_limit_key="api", rate_limit_concurrency="0")
        result = promote(client, leases)
        assert result.moved == 1
        assert result.limited == 0


class TestScriptCache:
    def test_promote_after_script_flush(self, client, leases):
        schedule(client, "a", NOW - 1)
        promote(client, leases)
        client.script_flush()
        schedule(client, "b", NOW - 1)
        assert promote(client, leases).moved == 1
