"""The Redis state after a promotion by schedulerd matches that after one by RQ's own scheduler.

The same scheduled jobs, with identical ids, are created by the RQ release under test on two
fresh servers. On server A, RQ's own scheduler of that release runs one pass
(RQScheduler.acquire_locks() and enqueue_scheduled_jobs()). On server B, a real `schedulerd run`
process promotes and is stopped. Then every key on the two servers is compared. The
differences that remain are listed, each with the reason it is deliberate, and the test fails
on any difference that is not listed as well as on a listed one that went away.
"""

from __future__ import annotations

import pickle
import re
import signal
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
import redis

from tests.support.fixture_types import RedisServerFactory, StartProcess
from tests.support.redis_server import RedisServer
from tests.support.rq_processes import produce
from tests.support.rq_tools import promote_once_with_rq
from tests.support.rqenvs import RQEnv
from tests.support.schedulerd_process import start_schedulerd
from tests.support.waiting import wait_for

PROMOTE_TIMEOUT_S = 15.0
DAEMON_STOP_TIMEOUT_S = 10.0
# The two passes run a few seconds apart, and each snapshot is taken right after its pass.
TTL_TOLERANCE_MS = 3000
JOB_TTL_S = 300
RQ_TIMESTAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
RQ_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Differ between the two servers by nature: creation and promotion instants, and a heartbeat
# that neither scheduler writes. Compared by presence and format, not by value.
TIMESTAMP_FIELDS = {"created_at", "enqueued_at", "last_heartbeat"}
# Pickled and possibly zlib-compressed values: compared decoded, and their bytes separately.
ENCODED_FIELDS = {"data", "meta"}
# Keys that only one side writes by design, after the key prefix: RQ's and schedulerd's lease
# (RQ's stays behind, as after a crash), the scheduler info hash, and schedulerd's quarantine sets.
IGNORED_KEY_KINDS = ("scheduler-lock:", "scheduler:", "schedulerd:quarantine:")
# An RQ timestamp for the ended_at of jobs that look as if they had run once.
ENDED_AT = b"2026-01-02T03:04:05.000006Z"
# RQ 3.0 takes the prefix of every key from RQ_KEY_PREFIX, and schedulerd reads it as well.
CUSTOM_PREFIX = "myapp"


@dataclass(frozen=True)
class KeyState:
    type: str
    pttl_ms: int
    value: Any


def snapshot(client: redis.Redis) -> dict[bytes, KeyState]:
    """Return the type, PTTL and full value of every key on the server."""
    state = {}
    for key in client.scan_iter(count=1000):
        key_type = client.type(key).decode()
        value: Any
        if key_type == "hash":
            value = client.hgetall(key)
        elif key_type == "list":
            value = client.lrange(key, 0, -1)
        elif key_type == "set":
            value = sorted(client.smembers(key))
        elif key_type == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif key_type == "string":
            value = client.get(key)
        else:
            value = f"<{key_type}>"
        state[key] = KeyState(key_type, client.pttl(key), value)
    return state


def decode_field(field: str, raw: bytes) -> Any:
    """Decode a job's data or meta field the way RQ's default serializer reads it.

    An empty payload stays empty bytes, because RQ cannot deserialize it either.
    """
    if field == "data":
        # Job.restore in every tested RQ release falls back to the raw bytes when zlib fails.
        try:
            raw = zlib.decompress(raw)
        except zlib.error:
            pass
    if raw == b"":
        return raw
    return pickle.loads(raw)


def timestamp_kind(value: bytes | None) -> str:
    if value is None:
        return "missing"
    if value == b"":
        return "empty"
    return "rq-format" if RQ_TIMESTAMP.match(value) else f"other: {value!r}"


def ttls_match(rq_pttl_ms: int, sd_pttl_ms: int) -> bool:
    """Whether two PTTL replies agree: both without expiry, or both expiring at about the same time."""
    if rq_pttl_ms < 0 or sd_pttl_ms < 0:
        return rq_pttl_ms == sd_pttl_ms
    return abs(rq_pttl_ms - sd_pttl_ms) <= TTL_TOLERANCE_MS


def zsets_match_roughly(rq_items: list[tuple[bytes, float]], sd_items: list[tuple[bytes, float]]) -> bool:
    """Whether two sorted sets have the same members in the same order and scores within the tolerance."""
    if [member for member, _ in rq_items] != [member for member, _ in sd_items]:
        return False
    return all(
        abs(rq_score - sd_score) * 1000 <= TTL_TOLERANCE_MS
        for (_, rq_score), (_, sd_score) in zip(rq_items, sd_items)
    )


def is_ignored(key: bytes, prefix: str) -> bool:
    return any(key.startswith(f"{prefix}:{kind}".encode()) for kind in IGNORED_KEY_KINDS)


def compare_hashes(
    key: bytes, rq_hash: dict[bytes, bytes], sd_hash: dict[bytes, bytes]
) -> dict[tuple[str, str], Any]:
    differences: dict[tuple[str, str], Any] = {}
    name = key.decode()
    for field_bytes in sorted(set(rq_hash) | set(sd_hash)):
        field = field_bytes.decode()
        rq_value, sd_value = rq_hash.get(field_bytes), sd_hash.get(field_bytes)
        if field in TIMESTAMP_FIELDS:
            rq_kind, sd_kind = timestamp_kind(rq_value), timestamp_kind(sd_value)
            if rq_kind != sd_kind:
                differences[(name, field)] = (rq_kind, sd_kind)
        elif field in ENCODED_FIELDS and rq_value is not None and sd_value is not None:
            rq_decoded, sd_decoded = decode_field(field, rq_value), decode_field(field, sd_value)
            if rq_decoded != sd_decoded:
                differences[(name, field)] = (rq_decoded, sd_decoded)
            if rq_value != sd_value:
                differences[(name, f"{field} bytes")] = (rq_value, sd_value)
        elif rq_value != sd_value:
            differences[(name, field)] = (rq_value, sd_value)
    return differences


def compare_states(
    rq_state: dict[bytes, KeyState], sd_state: dict[bytes, KeyState], prefix: str
) -> dict[tuple[str, str], Any]:
    """Return every difference as {(key, aspect): (RQ's value, schedulerd's value)}."""
    differences: dict[tuple[str, str], Any] = {}
    for key in sorted(set(rq_state) | set(sd_state)):
        if is_ignored(key, prefix):
            continue
        name = key.decode()
        rq_key, sd_key = rq_state.get(key), sd_state.get(key)
        if rq_key is None or sd_key is None:
            differences[(name, "exists")] = (rq_key is not None, sd_key is not None)
            continue
        if rq_key.type != sd_key.type:
            differences[(name, "type")] = (rq_key.type, sd_key.type)
            continue
        if not ttls_match(rq_key.pttl_ms, sd_key.pttl_ms):
            differences[(name, "ttl")] = (rq_key.pttl_ms, sd_key.pttl_ms)
        if rq_key.type == "hash":
            differences.update(compare_hashes(key, rq_key.value, sd_key.value))
        elif rq_key.type == "zset" and key.startswith(f"{prefix}:rl:".encode()):
            # RQ 3.0's limiter scores its sets with the promotion time in whole seconds, and
            # the two passes run seconds apart, so only members and order must match.
            if not zsets_match_roughly(rq_key.value, sd_key.value):
                differences[(name, "value")] = (rq_key.value, sd_key.value)
        elif rq_key.value != sd_key.value:
            differences[(name, "value")] = (rq_key.value, sd_key.value)
    return differences


def job_spec(rq_env: RQEnv, due_at: float) -> dict[str, list[dict[str, Any]]]:
    """Return the jobs to schedule per queue; all are due except "future"."""
    default = [
        {"kind": "enqueue_at", "at": due_at, "marker": "plain", "job_id": "plain"},
        {"kind": "enqueue_at", "at": due_at, "marker": "front-1", "job_id": "front-1", "at_front": True},
        {"kind": "enqueue_at", "at": due_at, "marker": "front-2", "job_id": "front-2", "at_front": True},
        {"kind": "enqueue_at", "at": due_at, "marker": "ttl", "job_id": "ttl", "ttl": JOB_TTL_S},
        {"kind": "enqueue_at", "at": due_at, "marker": "meta", "job_id": "meta", "meta": {"k": "v", "n": [1, 2]}},
        {"kind": "enqueue_at", "at": due_at, "marker": "old-pickle-meta", "job_id": "old-pickle-meta",
         "meta": {"k": "v"}},
        {"kind": "enqueue_at", "at": due_at, "marker": "gone", "job_id": "gone"},
        {"kind": "enqueue_at", "at": due_at, "marker": "options", "job_id": "options", "result_ttl": 30,
         "failure_ttl": 40, "timeout": 77, "description": "with result_ttl, failure_ttl and timeout"},
        {"kind": "enqueue_at", "at": due_at, "marker": "no-timeout", "job_id": "no-timeout"},
        {"kind": "enqueue_at", "at": due_at, "marker": "raw-data", "job_id": "raw-data"},
        {"kind": "enqueue_at", "at": due_at + 3600, "marker": "future", "job_id": "future"},
    ]  # fmt: skip
    if rq_env.version_info >= (2, 0):
        # Retry(enqueue_at_front=True) exists in RQ 2.12 and 3.0, not in 1.16. RQ pushes such a
        # job to the front only once it has run (ended_at set), so both cases are here.
        default += [
            {"kind": "enqueue_at", "at": due_at, "marker": "retry-front", "job_id": "retry-front",
             "retry": [1, 5], "retry_at_front": True},
            {"kind": "enqueue_at", "at": due_at, "marker": "retry-front-unrun", "job_id": "retry-front-unrun",
             "retry": [1, 5], "retry_at_front": True},
            {"kind": "enqueue_at", "at": due_at, "marker": "retry-back", "job_id": "retry-back", "retry": [1, 5]},
        ]  # fmt: skip
    spec = {
        "default": default,
        "high": [
            {"kind": "enqueue_at", "at": due_at, "marker": "high-1", "job_id": "high-1"},
            {"kind": "enqueue_at", "at": due_at - 5, "marker": "high-0", "job_id": "high-0"},
        ],
        "low": [{"kind": "enqueue_at", "at": due_at, "marker": "low", "job_id": "low"}],
        # An aware datetime before 1970 gets a negative score.
        "epoch": [{"kind": "enqueue_at", "at": -3600.0, "marker": "pre-epoch", "job_id": "pre-epoch"}],
        "empty": [{"kind": "enqueue_at", "at": due_at, "marker": "empty-data", "job_id": "empty-data"}],
    }
    if rq_env.version_info >= (3, 0):
        # RQ 3.0 hands jobs with a rate limit to its limiter, which queues at most `concurrency`
        # jobs per key and keeps the rest waiting. Ids sort in score order, and the ordinary
        # job between the limited ones shows where each promoter puts limited jobs.
        spec["limited"] = [
            {"kind": "enqueue_at", "at": due_at, "marker": "a-limited", "job_id": "a-limited",
             "rate_limit": ["k", 2]},
            {"kind": "enqueue_at", "at": due_at, "marker": "b-plain", "job_id": "b-plain"},
            {"kind": "enqueue_at", "at": due_at, "marker": "c-limited", "job_id": "c-limited",
             "rate_limit": ["k", 2], "ttl": JOB_TTL_S},
            {"kind": "enqueue_at", "at": due_at, "marker": "d-waits", "job_id": "d-waits",
             "rate_limit": ["k", 2]},
            {"kind": "enqueue_at", "at": due_at, "marker": "e-limited-front", "job_id": "e-limited-front",
             "rate_limit": ["k2", 1], "at_front": True},
        ]  # fmt: skip
    return spec


def queue_names(rq_env: RQEnv) -> list[str]:
    return list(job_spec(rq_env, 0.0))


def schedule_input(rq_env: RQEnv, server: RedisServer, due_at: float, prefix: str) -> None:
    """Create the same scheduled jobs on `server`, then edit them as described per id."""
    spec = [{**item, "queue": queue} for queue, items in job_spec(rq_env, due_at).items() for item in items]
    produce(rq_env, server.url, "default", spec, env=prefix_env(prefix))

    client = server.client()
    job = f"{prefix}:job:"
    # A job deleted after it was scheduled, for example by its result_ttl or by hand.
    client.delete(f"{job}gone")
    # Written by a producer on an older Python, whose pickle protocol differs from RQ's.
    client.hset(f"{job}old-pickle-meta", "meta", pickle.dumps({"k": "v"}, protocol=2))
    # Written by a producer that stores data uncompressed, which every RQ release reads.
    client.hset(f"{job}raw-data", "data", zlib.decompress(client.hget(f"{job}raw-data", "data") or b""))
    # A payload lost or truncated to nothing after the job was scheduled.
    client.hset(f"{job}empty-data", "data", "")
    # Written by a producer that leaves the timeout to the queue's default.
    client.hdel(f"{job}no-timeout", "timeout")
    # A dependent job and a dependency, whose keys RQ expires along with a job that has a TTL.
    # RQ spells the dependencies key with two colons.
    client.sadd(f"{job}ttl:dependents", "child")
    client.sadd(f"{job}:ttl:dependencies", "parent")
    client.sadd(f"{job}plain:dependents", "child")
    if rq_env.version_info >= (2, 0):
        # As after a failed run that RQ scheduled for a retry.
        for job_id in ("retry-front", "retry-back"):
            client.hset(f"{job}{job_id}", mapping={"ended_at": ENDED_AT, "status": "scheduled"})
    # A queue deleted (Queue.delete() removes it from rq:queues) while jobs were scheduled in it.
    client.srem(f"{prefix}:queues", f"{prefix}:queue:low")


def prefix_env(prefix: str) -> dict[str, str]:
    return {} if prefix == "rq" else {"RQ_KEY_PREFIX": prefix}


def expected_differences(rq_env: RQEnv, prefix: str) -> dict[tuple[str, str], str]:
    """Return the differences that are deliberate for `rq_env`, each with its reason."""
    p = prefix
    expected = {
        (f"{p}:job:raw-data", "data bytes"): (
            "RQ rewrites the whole job hash on promotion (Job.save) and so compresses data stored "
            "uncompressed; schedulerd writes only status, enqueued_at, origin and a missing "
            "timeout. Decoded, both are equal (checked), and every RQ release reads both forms."
        ),
        (f"{p}:job:old-pickle-meta", "meta bytes"): (
            "RQ re-pickles meta with pickle.HIGHEST_PROTOCOL when it rewrites the hash; "
            "schedulerd leaves the stored bytes. Decoded, both are equal (checked)."
        ),
        (f"{p}:scheduled:epoch", "exists"): (
            "RQ reads due ids from score 0 upward (ZRANGEBYSCORE key 0 now), so a job scheduled "
            "before 1970 is never promoted; schedulerd reads from -inf and promotes it, because it "
            "is due."
        ),
        (f"{p}:queue:epoch", "exists"): "The same pre-1970 job, which only schedulerd promotes.",
        (f"{p}:job:pre-epoch", "status"): "The same pre-1970 job, which only schedulerd promotes.",
        (f"{p}:job:pre-epoch", "enqueued_at"): "The same pre-1970 job, which only schedulerd promotes.",
        (f"{p}:queue:empty", "exists"): (
            "RQ promotes a job whose data field is empty, although no worker can unpickle an "
            "empty payload; schedulerd moves it to its quarantine set instead, keeping it out "
            "of the queue."
        ),
        (f"{p}:job:empty-data", "status"): "The same empty-data job, which only RQ promotes.",
        (f"{p}:job:empty-data", "enqueued_at"): "The same empty-data job, which only RQ promotes.",
        (f"{p}:job:empty-data", "data bytes"): (
            "RQ rewrites the empty payload zlib-compressed when it promotes the job."
        ),
    }
    if rq_env.version_info < (2, 0):
        expected[(f"{p}:scheduled:default", "value")] = (
            "RQ 1.16 removes only ids whose hash it could fetch, so the id of a deleted job stays "
            "in the scheduled set and is fetched again on every pass; RQ 2.12 and 3.0 remove it, "
            "and schedulerd drops it too."
        )
    if rq_env.version_info >= (3, 0):
        expected[(f"{p}:queue:limited", "value")] = (
            "RQ 3.0's scheduler pushes a pass's ordinary jobs first and hands its rate-limited "
            "jobs to the limiter afterwards, so a limited job due before an ordinary one lands "
            "behind it. schedulerd promotes in due order (score, then id) and lets the limiter "
            "push a limited job in its turn."
        )
    if rq_env.version_info >= (2, 0):
        expected[(f"{p}:queues", "value")] = (
            "RQ 2.12 and 3.0 add a queue to rq:queues only when a job is scheduled or enqueued "
            "directly, not on promotion; schedulerd adds it on promotion, as RQ 1.16 does, so a "
            "queue with jobs on it is listed by Queue.all() and `rq info`."
        )
    return expected


def wait_until_nothing_due(client: redis.Redis, prefix: str, queues: list[str]) -> None:
    def nothing_due() -> bool:
        seconds, microseconds = client.time()
        now = seconds + microseconds / 1e6
        return all(client.zcount(f"{prefix}:scheduled:{queue}", "-inf", now) == 0 for queue in queues)

    wait_for(nothing_due, PROMOTE_TIMEOUT_S, description="every due id promoted")


def run_both(
    rq_env: RQEnv,
    redis_server_factory: RedisServerFactory,
    start_process: StartProcess,
    queues: list[str],
    schedule: Callable[[RedisServer], None],
    prefix: str = "rq",
) -> tuple[dict[bytes, KeyState], dict[bytes, KeyState]]:
    """Run `schedule` on two servers, promote with RQ on one and schedulerd on the other, and snapshot both."""
    rq_server = redis_server_factory()
    sd_server = redis_server_factory()
    for server in (rq_server, sd_server):
        schedule(server)

    assert promote_once_with_rq(rq_env, rq_server.url, queues, env=prefix_env(prefix)) == sorted(queues)
    rq_state = snapshot(rq_server.client())

    # The daemon gets the prefix the way RQ 3.0 does, from RQ_KEY_PREFIX.
    daemon = start_schedulerd(start_process, sd_server.url, queues, env=prefix_env(prefix))
    wait_until_nothing_due(sd_server.client(), prefix, queues)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(DAEMON_STOP_TIMEOUT_S) == 0
    sd_state = snapshot(sd_server.client())
    return rq_state, sd_state


class TestPromotionMatchesRQ:
    @pytest.mark.parametrize("prefix", ["rq", CUSTOM_PREFIX])
    def test_state_matches_rq_scheduler(
        self,
        rq_env: RQEnv,
        redis_server_factory: RedisServerFactory,
        start_process: StartProcess,
        prefix: str,
    ) -> None:
        if prefix != "rq" and rq_env.version_info < (3, 0):
            pytest.skip(f"RQ_KEY_PREFIX exists from RQ 3.0; this is RQ {rq_env.version}")
        due_at = float(int(time.time()) - 30)

        rq_state, sd_state = run_both(
            rq_env, redis_server_factory, start_process, queue_names(rq_env),
            lambda server: schedule_input(rq_env, server, due_at, prefix), prefix,
        )  # fmt: skip

        def key(name: str) -> bytes:
            return f"{prefix}:{name}".encode()

        # The comparison below is only as good as the input, so first check that both passes
        # did what RQ's contract requires.
        front = [b"front-2", b"front-1"]
        back = [b"meta", b"no-timeout", b"old-pickle-meta", b"options", b"plain", b"raw-data"]
        if rq_env.version_info >= (2, 0):
            front = [b"retry-front", *front]
            back = [*back, b"retry-back", b"retry-front-unrun"]
        # Ids of equal score leave the scheduled set in lexical order, and LPUSH reverses them.
        expected_default = [*front, *back, b"ttl"]
        for state in (rq_state, sd_state):
            assert state[key("queue:default")].value == expected_default
            assert state[key("queue:high")].value == [b"high-0", b"high-1"]
            assert state[key("queue:low")].value == [b"low"]
            plain = state[key("job:plain")].value
            assert plain[b"status"] == b"queued"
            assert plain[b"origin"] == b"default"
            assert RQ_TIMESTAMP.match(plain[b"enqueued_at"])
            assert state[key("job:no-timeout")].value[b"timeout"] == b"180"
            assert state[key("job:options")].value[b"timeout"] == b"77"
            for ttl_key in (key("job:ttl"), key("job:ttl:dependents"), key("job::ttl:dependencies")):
                assert 0 < JOB_TTL_S * 1000 - state[ttl_key].pttl_ms < TTL_TOLERANCE_MS, ttl_key
            assert state[key("job:plain:dependents")].pttl_ms == -1
            assert state[key("job:future")].value[b"status"] == b"scheduled"
        assert sd_state[key("queue:epoch")].value == [b"pre-epoch"]
        assert sd_state[key("schedulerd:quarantine:empty")].value == [(b"empty-data", due_at)]
        if rq_env.version_info >= (3, 0):
            # Concurrency 2 for key "k": a and c get the slots, d waits; e has key "k2" to itself.
            assert rq_state[key("queue:limited")].value == [
                b"e-limited-front",
                b"b-plain",
                b"a-limited",
                b"c-limited",
            ]
            assert sd_state[key("queue:limited")].value == [
                b"e-limited-front",
                b"a-limited",
                b"b-plain",
                b"c-limited",
            ]
            for state in (rq_state, sd_state):
                assert [member for member, _ in state[key("rl:k:allowed")].value] == [
                    b"a-limited",
                    b"c-limited",
                ]
                assert [member for member, _ in state[key("rl:k:rate_limited")].value] == [b"d-waits"]
                assert state[key("job:d-waits")].value[b"status"] == b"rate_limited"
                assert state[key("job:a-limited")].value[b"status"] == b"queued"
                assert state[key("rl:k")].value == {b"concurrency": b"2"}
                assert state[key("rl-keys")].value == [b"k", b"k2"]
        enqueued_at = datetime.strptime(
            sd_state[key("job:plain")].value[b"enqueued_at"].decode(), RQ_TIME_FORMAT
        )
        assert abs(enqueued_at.replace(tzinfo=timezone.utc).timestamp() - time.time()) < 10

        differences = compare_states(rq_state, sd_state, prefix)
        expected = expected_differences(rq_env, prefix)
        unexpected = {name: value for name, value in differences.items() if name not in expected}
        assert unexpected == {}
        assert sorted(differences) == sorted(expected)

    def test_empty_timeout_gets_default_like_rq(
        self, rq_env: RQEnv, redis_server_factory: RedisServerFactory, start_process: StartProcess
    ) -> None:
        def schedule(server: RedisServer) -> None:
            produce(rq_env, server.url, "default", [
                {"kind": "enqueue_at", "at": float(int(time.time()) - 30), "marker": "empty", "job_id": "empty"},
            ])  # fmt: skip
            # A hand-written producer may store an empty timeout. Job.restore reads any falsy
            # timeout as None, and the promotion then fills in the queue's default.
            server.client().hset("rq:job:empty", "timeout", "")

        rq_state, sd_state = run_both(rq_env, redis_server_factory, start_process, ["default"], schedule)

        assert rq_state[b"rq:job:empty"].value[b"timeout"] == b"180"
        assert sd_state[b"rq:job:empty"].value[b"timeout"] == b"180"
