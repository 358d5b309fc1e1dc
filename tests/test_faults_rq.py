"""schedulerd beside `rq worker --with-scheduler` when that worker is killed with SIGKILL.

RQ 2.12's worker runs its scheduler in a forked child. SIGKILL to the worker alone leaves that
child running with its scheduler locks, so it keeps promoting its queues while schedulerd leads
the others. Once the child dies too, schedulerd takes its queues over. Every job must run once.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from schedulerd.keys import Keys
from tests.support.daemon_events import FAST_LEASES
from tests.support.job_runs import ran_ids, wait_for_runs
from tests.support.rq_processes import produce
from tests.support.rqenvs import rq_env as build_rq_env
from tests.support.schedulerd_process import daemon_token, start_schedulerd
from tests.support.waiting import wait_for

KEYS = Keys()
RQ_QUEUE = "rq-led"
DAEMON_QUEUE = "daemon-led"
# A job that keeps the killed worker's work-horse busy for the whole test, so that worker never
# pops a scheduled job and a job lost with it cannot be mistaken for a scheduling fault.
BLOCKER_S = 120.0
# Due times of the scheduled jobs, spread over the kills below.
DUE_IN_S = [0.5 + 0.25 * number for number in range(24)]
RUN_TIMEOUT_S = 30.0
# Long enough after the last run for a second promotion of any id to run too.
SETTLE_S = 2.0


def child_pids(parent_pid: int) -> list[int]:
    """Return the pids of the live children of ``parent_pid``, read from /proc (Linux only)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may contain spaces, so split after its closing one.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent_pid:
            children.append(int(entry))
    return children


def kill_if_alive(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class TestRQWorkerKilled:
    @pytest.mark.slow
    def test_sigkill_worker_runs_jobs_once(self, redis_server, start_process, start_worker):
        rq_env = build_rq_env("2.12")
        client = redis_server.client()
        url = redis_server.url

        # RQ's scheduler takes the lock of RQ_QUEUE first, so schedulerd is only a standby for it.
        doomed = start_worker(rq_env, url, [RQ_QUEUE], with_scheduler=True, name="doomed")
        wait_for(
            lambda: client.exists(KEYS.lease(RQ_QUEUE)), 15, description="RQ's scheduler to lock its queue"
        )
        rq_scheduler_name = client.get(KEYS.lease(RQ_QUEUE))
        produce(
            rq_env,
            url,
            RQ_QUEUE,
            [{"kind": "enqueue", "marker": "blocker", "func": "sleep_then_record", "sleep_s": BLOCKER_S}],
        )
        wait_for(
            lambda: client.hget("rq:worker:doomed", "state") == b"busy",
            15,
            description="the doomed worker to start the blocking job",
        )

        daemon = start_schedulerd(start_process, url, [RQ_QUEUE, DAEMON_QUEUE], *FAST_LEASES)
        token = daemon_token(daemon).encode()
        wait_for(
            lambda: client.get(KEYS.lease(DAEMON_QUEUE)) == token,
            10,
            description="schedulerd to lead its queue",
        )
        start_worker(rq_env, url, [RQ_QUEUE, DAEMON_QUEUE], name="survivor")

        markers = []
        for queue in (RQ_QUEUE, DAEMON_QUEUE):
            spec = [
                {"kind": "enqueue_in", "in_s": due_in_s, "marker": f"{queue}-{n}"}
                for n, due_in_s in enumerate(DUE_IN_S)
            ]
            produce(rq_env, url, queue, spec)
            markers += [item["marker"] for item in spec]

        time.sleep(1.5)
        # RQ's work-horse runs in a process group of its own, which the harness's group kill at
        # test end misses, so the test kills the doomed worker's children itself.
        orphans = child_pids(doomed.pid)
        try:
            # The worker only, because its process group also contains the scheduler child.
            os.kill(doomed.pid, signal.SIGKILL)
            time.sleep(1.5)
            assert client.get(KEYS.lease(RQ_QUEUE)) == rq_scheduler_name, (
                "the orphaned RQ scheduler lost its lock"
            )
            orphan_pid = int(client.hget(f"rq:scheduler:{rq_scheduler_name.decode()}", "pid"))
            assert orphan_pid in orphans
            os.kill(orphan_pid, signal.SIGKILL)
            # RQ locks for interval + 60 s. Expiring the lock now replaces waiting for that minute.
            client.pexpire(KEYS.lease(RQ_QUEUE), 1)
            wait_for(
                lambda: client.get(KEYS.lease(RQ_QUEUE)) == token,
                5,
                description="schedulerd to take RQ's queue",
            )
            wait_for_runs(client, len(markers), RUN_TIMEOUT_S)
            time.sleep(SETTLE_S)
        finally:
            for pid in orphans:
                kill_if_alive(pid)

        runs = Counter(marker for marker in client.lrange("test:ran", 0, -1))
        ran_more_than_once = sorted(marker for marker, count in runs.items() if count > 1)
        never_ran = sorted(marker for marker in markers if runs[marker.encode()] == 0)
        assert ran_more_than_once == []
        assert never_ran == []
        assert len(ran_ids(client)) == len(markers)
        assert client.zcard(KEYS.scheduled_set(RQ_QUEUE)) == 0
        assert client.zcard(KEYS.scheduled_set(DAEMON_QUEUE)) == 0
