"""schedulerd next to RQ's own scheduler, and several schedulerd instances, on the same queues.

RQ's scheduler (`rq worker --with-scheduler`) and schedulerd take the same lock key,
rq:scheduler-lock:<queue>, so one of them promotes each queue at a time. These tests run both,
or several schedulerd processes, against one real redis-server with real RQ workers, and check
that every job runs exactly once while the lease moves from one scheduler to another.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.fixture_types import StartProcess, StartWorker
from tests.support.job_runs import ran_ids, wait_for_runs
from tests.support.processes import ManagedProcess
from tests.support.redis_server import RedisServer
from tests.support.rq_processes import produce
from tests.support.rq_tools import scheduler_pids
from tests.support.rqenvs import RQEnv
from tests.support.schedulerd_process import daemon_token, log_events, promoted_count, start_schedulerd
from tests.support.waiting import wait_for

QUEUES = ["default", "high"]
THREE_QUEUES = ["default", "high", "low"]
# With the default contest interval of 900 s, a standby takes over from a schedulerd leader
# that steps down only through the release message the leader publishes.
PEER_OPTIONS = ("--lease-ttl", "3", "--renew-interval", "1")
# A standby contests every 0.5 s, so it takes a lease within that time after RQ deletes it,
# because RQ's DEL sends neither schedulerd's release message nor a key expiry event.
DAEMON_OPTIONS = ("--lease-ttl", "3", "--renew-interval", "1", "--contest-interval", "0.5")
# Longer than the daemon's 1 s poll interval, so a duplicate promotion would have run too.
SETTLE_S = 1.5
RUN_TIMEOUT_S = 30.0
LEASE_TIMEOUT_S = 10.0
DAEMON_STOP_TIMEOUT_S = 10.0
JOBS_PER_QUEUE_AND_SECOND = 26


def lease_key(queue: str) -> str:
    return f"rq:scheduler-lock:{queue}"


def lease_values(client: redis.Redis, queues: list[str]) -> dict[str, str | None]:
    values = {queue: client.get(lease_key(queue)) for queue in queues}
    return {queue: None if value is None else value.decode() for queue, value in values.items()}


def jobs_due(queues: list[str], due_ats: list[float], per_queue_and_second: int) -> list[dict[str, Any]]:
    """Return a producer spec of record jobs: `per_queue_and_second` per queue and due time.

    Job ids name the queue and the due time's offset, so a failure shows which batch went wrong.
    """
    spec = []
    for due_at in due_ats:
        for queue in queues:
            for number in range(per_queue_and_second):
                job_id = f"{queue}-{int(due_at) % 100:02d}-{number:02d}"
                spec.append(
                    {"kind": "enqueue_at", "at": due_at, "marker": job_id, "job_id": job_id, "queue": queue}
                )
    return spec


def assert_each_ran_once(client: redis.Redis, job_ids: list[str]) -> None:
    counts = Counter(ran_ids(client))
    repeated = {job_id: count for job_id, count in counts.items() if count != 1}
    missing = sorted(set(job_ids) - set(counts))
    unknown = sorted(set(counts) - set(job_ids))
    assert repeated == {}
    assert missing == []
    assert unknown == []


def process_group_members(pgid: int) -> list[int]:
    """Return the pids of live (not zombie) processes in process group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # The command name may contain spaces and parentheses, so split after its last ")".
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def rq_scheduler_pid(worker: ManagedProcess) -> int:
    """Return the pid of the scheduler process that `worker` forked, from the line RQ logs for it."""
    match = re.search(r"Scheduler for .* started with PID (\d+)", worker.read_log())
    assert match is not None, f"{worker.name} logged no scheduler start"
    return int(match.group(1))


def kill_processes(*processes: ManagedProcess) -> None:
    """SIGKILL the process groups of workers and daemons whose shutdown a test does not check.

    That also ends an orphaned RQ scheduler process. It saves time at teardown: an RQ 2.12 or
    3.0 worker stopped with SIGTERM sometimes hangs for seconds while it unsubscribes from its
    pubsub channel, and schedulerd takes about 1 s to stop its release-message listener.
    """
    for process in processes:
        process.kill()


def stop_daemon(daemon: ManagedProcess) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(DAEMON_STOP_TIMEOUT_S) == 0


def total_promoted(daemon: ManagedProcess, queues: list[str]) -> int:
    return sum(promoted_count(daemon, queue) for queue in queues)


def wait_for_rq_leases(client: redis.Redis, queues: list[str], worker: ManagedProcess) -> dict[str, str]:
    """Wait until RQ's scheduler in `worker` holds every queue's lock; return the lock values."""

    def held() -> dict[str, str] | None:
        if not worker.is_running():
            raise AssertionError(f"{worker.name} exited with code {worker.returncode}:\n{worker.read_log()}")
        values = lease_values(client, queues)
        if any(value is None for value in values.values()):
            return None
        return {queue: str(value) for queue, value in values.items()}

    return wait_for(held, LEASE_TIMEOUT_S, description="RQ's scheduler to hold every lock")


@pytest.mark.slow
class TestWithRQScheduler:
    def test_jobs_run_once_across_handover_from_rq(
        self, rq_env: RQEnv, redis_server: RedisServer, start_process: StartProcess, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        rq_leader = start_worker(rq_env, redis_server.url, QUEUES, with_scheduler=True)
        rq_locks = wait_for_rq_leases(client, QUEUES, rq_leader)
        daemon = start_schedulerd(start_process, redis_server.url, QUEUES, *DAEMON_OPTIONS)
        token = daemon_token(daemon)
        workers = [start_worker(rq_env, redis_server.url, QUEUES) for _ in range(2)]
        # RQ's phase falls due at +1 s and +2 s and schedulerd's at +4 s and +5 s. The SIGTERM
        # below follows the runs of the +2 s jobs, and RQ's scheduler sleeps 1 s between
        # passes, so it has released its locks by about +3.3 s, before the second phase is due.
        start_s = float(int(time.time()))
        rq_phase = jobs_due(QUEUES, [start_s + 1, start_s + 2], JOBS_PER_QUEUE_AND_SECOND)
        daemon_phase = jobs_due(QUEUES, [start_s + 4, start_s + 5], JOBS_PER_QUEUE_AND_SECOND)
        last_second = jobs_due(QUEUES, [start_s + 5], JOBS_PER_QUEUE_AND_SECOND)
        job_ids = produce(rq_env, redis_server.url, QUEUES[0], rq_phase + daemon_phase)
        assert len(job_ids) >= 200

        wait_for_runs(client, len(rq_phase), RUN_TIMEOUT_S)
        # The standby must not have taken a lock that RQ's scheduler holds.
        assert lease_values(client, QUEUES) == rq_locks
        # Warm shutdown: the worker stops its scheduler process, which deletes its locks.
        rq_leader.send_signal(signal.SIGTERM)
        wait_for_runs(client, len(job_ids), RUN_TIMEOUT_S)
        time.sleep(SETTLE_S)
        assert lease_values(client, QUEUES) == {queue: token for queue in QUEUES}
        kill_processes(rq_leader, *workers)
        stop_daemon(daemon)

        assert_each_ran_once(client, job_ids)
        # schedulerd took over: it promoted at least the jobs of the last second, and none of
        # those RQ had already promoted.
        assert len(last_second) <= total_promoted(daemon, QUEUES) <= len(daemon_phase)
        assert client.zcard("rq:scheduled:default") + client.zcard("rq:scheduled:high") == 0

    def test_jobs_run_once_after_rq_worker_sigkill(
        self, rq_env: RQEnv, redis_server: RedisServer, start_process: StartProcess, start_worker: StartWorker
    ) -> None:
        client = redis_server.client()
        # Only the RQ worker listens on "busy", so a job there keeps exactly that worker busy.
        queues = ["busy", *QUEUES]
        rq_leader = start_worker(rq_env, redis_server.url, queues, with_scheduler=True)
        rq_locks = wait_for_rq_leases(client, queues, rq_leader)
        daemon = start_schedulerd(start_process, redis_server.url, queues, *DAEMON_OPTIONS)
        token = daemon_token(daemon)
        worker = start_worker(rq_env, redis_server.url, QUEUES)
        # Phase 1 (+1 s) runs with the RQ worker alive, phase 2 (+3 s) after its SIGKILL, while
        # its orphaned scheduler process still holds the locks, and phase 3 (+5 s) after that
        # scheduler stepped down, so schedulerd promotes it. The scheduler gets SIGTERM once
        # phase 2 has run and checks for it before each pass, 1 s apart, so it makes no pass
        # after about +4.2 s.
        start_s = float(int(time.time()))
        phases = [jobs_due(QUEUES, [start_s + offset_s], 10) for offset_s in (1, 3, 5)]
        job_ids = produce(rq_env, redis_server.url, QUEUES[0], [item for phase in phases for item in phase])

        wait_for_runs(client, len(phases[0]), RUN_TIMEOUT_S)
        # The worker is killed while it runs a job. Killed while idle, its blocked BLPOP
        # connection would live on in the scheduler process, which inherits the socket at fork,
        # and Redis would hand the next pushed id to that connection, which no process reads.
        # That loses one job, with or without schedulerd.
        job_ids += produce(rq_env, redis_server.url, "busy", [
            {"kind": "enqueue", "marker": "busy", "job_id": "busy", "func": "sleep_then_record", "sleep_s": 1.0},
        ])  # fmt: skip
        wait_for(
            lambda: client.hget("rq:job:busy", "status") == b"started",
            RUN_TIMEOUT_S,
            description="busy job started",
        )
        # Only the worker's main process gets SIGKILL, as from the kernel's OOM killer.
        os.kill(rq_leader.pid, signal.SIGKILL)
        rq_leader.wait(DAEMON_STOP_TIMEOUT_S)
        scheduler_pid = rq_scheduler_pid(rq_leader)
        assert scheduler_pid in process_group_members(rq_leader.pid)
        if rq_env.version_info >= (2, 10):
            # RQ 2.10+ record the scheduler process's pid in its scheduler hash; RQ 1.16 stores
            # the worker's pid in the lock, taken before the fork.
            assert scheduler_pids(rq_env, redis_server.url, ["default"]) == {"default": scheduler_pid}

        wait_for_runs(client, len(phases[0]) + len(phases[1]) + 1, RUN_TIMEOUT_S)
        assert lease_values(client, queues) == rq_locks
        # The orphan releases its locks on SIGTERM. schedulerd gets no message about it and
        # finds the leases free on its next contest.
        os.kill(scheduler_pid, signal.SIGTERM)
        wait_for_runs(client, len(job_ids), RUN_TIMEOUT_S)
        time.sleep(SETTLE_S)
        assert lease_values(client, queues) == {queue: token for queue in queues}
        # Killing the worker's process group also ends the orphan if it is still up.
        kill_processes(rq_leader, worker)
        stop_daemon(daemon)

        assert_each_ran_once(client, job_ids)
        assert total_promoted(daemon, queues) == len(phases[2])


def tokens_by_instance(daemons: list[ManagedProcess]) -> dict[str, ManagedProcess]:
    return {daemon_token(daemon): daemon for daemon in daemons}


def lease_events(daemons: list[ManagedProcess], queue: str) -> list[tuple[str, str]]:
    """Return (daemon name, event) for every lease event of `queue`, in each daemon's log order."""
    return [
        (daemon.name, str(event["event"]))
        for daemon in daemons
        for event in log_events(daemon)
        if str(event.get("event")).startswith("lease_") and event.get("queue") == queue
    ]


@pytest.mark.slow
class TestSeveralInstances:
    @pytest.mark.parametrize("instances", [2, 3])
    def test_one_leader_per_queue_and_handover(
        self,
        rq_env: RQEnv,
        redis_server: RedisServer,
        start_process: StartProcess,
        start_worker: StartWorker,
        instances: int,
    ) -> None:
        client = redis_server.client()
        daemons = [
            start_schedulerd(
                start_process, redis_server.url, THREE_QUEUES, *PEER_OPTIONS, name=f"schedulerd-{n}"
            )
            for n in range(instances)
        ]
        by_token = tokens_by_instance(daemons)
        wait_for(
            lambda: all(lease_values(client, THREE_QUEUES).values()),
            LEASE_TIMEOUT_S,
            description="every lease taken",
        )
        worker = start_worker(rq_env, redis_server.url, THREE_QUEUES)
        first = jobs_due(THREE_QUEUES, [float(int(time.time()) + 1)], 5)
        job_ids = produce(rq_env, redis_server.url, THREE_QUEUES[0], first)
        wait_for_runs(client, len(first), RUN_TIMEOUT_S)
        leaders = lease_values(client, THREE_QUEUES)

        assert len(by_token) == instances
        for queue, holder in leaders.items():
            assert holder in by_token, f"{queue} lease holds {holder!r}, no instance's token"
            assert lease_events(daemons, queue) == [(by_token[str(holder)].name, "lease_acquired")]

        old_leader = by_token[str(leaders["default"])]
        standbys = [daemon for daemon in daemons if daemon is not old_leader]
        standby_tokens = {daemon_token(daemon) for daemon in standbys}
        stopped_at = time.time()
        stop_daemon(old_leader)
        wait_for(
            lambda: set(lease_values(client, THREE_QUEUES).values()) <= standby_tokens,
            LEASE_TIMEOUT_S,
            description="the standbys to take every lease of the stopped leader",
        )
        takeover_s = time.time() - stopped_at
        # Due at once, so the new leader promotes it on its next pass.
        second = [
            {"kind": "enqueue_at", "at": time.time(), "marker": f"after-{queue}", "job_id": f"after-{queue}",
             "queue": queue}
            for queue in THREE_QUEUES
        ]  # fmt: skip
        scheduled_at = time.time()
        job_ids += produce(rq_env, redis_server.url, THREE_QUEUES[0], second)
        wait_for_runs(client, len(job_ids), RUN_TIMEOUT_S)
        handover_s = time.time() - scheduled_at
        time.sleep(SETTLE_S)
        kill_processes(worker, *standbys)

        assert_each_ran_once(client, job_ids)
        # Without the release message the standbys would wait for their 900 s contest interval.
        # The bounds leave room for the stop itself, about 1 s, and for a loaded test machine.
        assert takeover_s < 5.0
        assert handover_s < 5.0
        assert lease_values(client, ["default"])["default"] in standby_tokens
