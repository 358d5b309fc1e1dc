"""Failover: how long a queue goes without promotions when its leader stops or dies.

    bench/.venv/bin/python bench/failover.py            # every case, 15 s bound
    bench/.venv/bin/python bench/failover.py --quick    # three cases, 12 s bound
    bench/.venv/bin/python bench/failover.py --bound 90 # let RQ's crash case run into its 61 s lock TTL

Each case runs a leader and a standby against a fresh redis-server, with one job due every 20 ms
for the whole run. Once both are up and jobs flow, the leader's process group gets SIGTERM
(graceful: it steps down) or SIGKILL (crash). MONITOR stamps every push onto the queue list
with the server's clock (harness/monitor.py). Reported per case:

  gap          from the last push before the handoff to the first push after it: the largest
               gap between two pushes from 0.5 s before the signal on. ">N s" when nothing was
               pushed within the bound after the signal.
  worst late   the largest lateness (push time - score) among jobs due after the signal
  lease left   the lease's remaining time to live when the signal was sent

schedulerd runs as `schedulerd run` with default settings, then with --contest-interval 1, then
on a server with notify-keyspace-events Ex. RQ 2.12 runs as two `rq worker --with-scheduler`
processes (SimpleWorker, so no work horse is forked per job; the scheduler is forked either way).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from harness import jobs
from harness.monitor import Push, PushMonitor
from harness.processes import ChildProcess, install_cleanup, wait_until
from harness.report import machine, print_machine, ratio, table, write_json
from harness.server import RedisServer, default_binary

BENCH_DIR = Path(__file__).resolve().parent
QUEUE = "default"
LEASE_KEY = f"rq:scheduler-lock:{QUEUE}"
SPACING_S = 0.02
STEADY_S = 2.0
AFTER_S = 1.0
START_TIMEOUT_S = 20.0
GAP_WINDOW_BEFORE_S = 0.5


@dataclass(frozen=True)
class Case:
    name: str
    scheduler: str
    """"schedulerd" or "RQ"."""
    stop: str
    """"graceful" (SIGTERM) or "crash" (SIGKILL)."""
    flags: tuple[str, ...] = ()
    server_config: tuple[tuple[str, str], ...] = ()


@dataclass
class Outcome:
    case: str
    scheduler: str
    stop: str
    settings: str
    took_over: bool
    gap_s: float | None
    worst_late_s: float | None
    lease_left_s: float | None
    bound_s: float
    pushes: int
    notes: list[str] = field(default_factory=list)


CASES = (
    Case("schedulerd graceful, defaults", "schedulerd", "graceful"),
    Case("schedulerd crash, defaults", "schedulerd", "crash"),
    Case("schedulerd graceful, --contest-interval 1", "schedulerd", "graceful", ("--contest-interval", "1")),
    Case("schedulerd crash, --contest-interval 1", "schedulerd", "crash", ("--contest-interval", "1")),
    Case("schedulerd graceful, server Ex events", "schedulerd", "graceful", (), (("notify-keyspace-events", "Ex"),)),
    Case("schedulerd crash, server Ex events", "schedulerd", "crash", (), (("notify-keyspace-events", "Ex"),)),
    Case("RQ graceful, defaults", "RQ", "graceful"),
    Case("RQ crash, defaults", "RQ", "crash"),
)
QUICK_CASES = (
    "schedulerd graceful, defaults",
    "schedulerd crash, server Ex events",
    "RQ graceful, defaults",
)


def scheduler_argv(case: Case, url: str, name: str) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if case.scheduler == "schedulerd":
        return [str(bin_dir / "schedulerd"), "run", "--queues", QUEUE, "--redis-url", url, "--log-format", "json",
                *case.flags]
    return [str(bin_dir / "rq"), "worker", "--with-scheduler", "--worker-class", "rq.worker.SimpleWorker",
            "--url", url, "--name", name, QUEUE]


def info_hash_pids(client: redis.Redis) -> set[int]:
    """Return the pids in the scheduler info hashes (rq:scheduler:<token>) that schedulerd writes."""
    pids = set()
    for key in client.scan_iter("rq:scheduler:*"):
        if client.type(key) == b"hash":
            pid = client.hget(key, "pid")
            if pid is not None:
                pids.add(int(pid))
    return pids


def wait_leader(client: redis.Redis, leader: ChildProcess) -> None:
    if not wait_until(lambda: client.exists(LEASE_KEY) or not leader.alive(), START_TIMEOUT_S) or not leader.alive():
        tail = " | ".join(leader.log_text().strip().splitlines()[-3:])
        raise RuntimeError(f"the leader took no lease within {START_TIMEOUT_S} s; log: {tail}")


def wait_standby(client: redis.Redis, case: Case, standby: ChildProcess, name: str) -> None:
    if case.scheduler == "schedulerd":
        def ready() -> bool:
            return standby.pid in info_hash_pids(client)
    else:
        def ready() -> bool:
            return bool(client.exists(f"rq:worker:{name}"))
    if not wait_until(lambda: ready() or not standby.alive(), START_TIMEOUT_S) or not standby.alive():
        tail = " | ".join(standby.log_text().strip().splitlines()[-3:])
        raise RuntimeError(f"the standby did not come up within {START_TIMEOUT_S} s; log: {tail}")


def server_time_s(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def analyse(pushes: Sequence[Push], score_of: dict[str, float], signal_at_s: float, bound_s: float) -> tuple[bool, float | None, float | None]:
    """Return (took over, gap s, worst lateness s of jobs due after the signal)."""
    times = sorted(push.at_s for push in pushes if push.at_s >= signal_at_s - GAP_WINDOW_BEFORE_S)
    after = [at for at in times if at > signal_at_s]
    if not after or after[0] - signal_at_s > bound_s:
        return False, None, None
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    gap_s = max(gaps) if gaps else None
    first_push: dict[str, float] = {}
    for push in pushes:
        first_push.setdefault(push.job_id, push.at_s)
    late = [first_push[job_id] - score for job_id, score in score_of.items()
            if score > signal_at_s and job_id in first_push and first_push[job_id] <= signal_at_s + bound_s]
    return True, gap_s, max(late) if late else None


def run_case(binary: Path, case: Case, bound_s: float, log_dir: Path) -> Outcome:
    config = dict(case.server_config)
    with RedisServer(binary, config) as server:
        client = server.client()
        first_due_s = time.time() + 1.0
        span_s = START_TIMEOUT_S + STEADY_S + bound_s + AFTER_S
        scores = [first_due_s + index * SPACING_S for index in range(int(span_s / SPACING_S))]
        ids = jobs.schedule_rq_jobs(client, QUEUE, scores, payload="tiny")
        score_of = dict(zip(ids, scores))

        monitor = PushMonitor(server.client()).start()
        slug = case.name.replace(" ", "-").replace(",", "")
        leader = ChildProcess(scheduler_argv(case, server.url, "leader"), log_path=log_dir / f"{slug}-leader.log", cwd=BENCH_DIR)
        standby: ChildProcess | None = None
        notes: list[str] = []
        signal_at_s = 0.0
        lease_left_ms = None
        try:
            wait_leader(client, leader)
            standby = ChildProcess(scheduler_argv(case, server.url, "standby"), log_path=log_dir / f"{slug}-standby.log", cwd=BENCH_DIR)
            wait_standby(client, case, standby, "standby")
            time.sleep(STEADY_S)

            lease_left_ms = client.pttl(LEASE_KEY)
            signal_at_s = server_time_s(client)
            leader.signal_group(signal.SIGTERM if case.stop == "graceful" else signal.SIGKILL)

            def standby_pushed() -> bool:
                return any(push.at_s > signal_at_s + 0.05 for push in monitor.pushes[-50:]) and \
                    client.get(LEASE_KEY) is not None and _held_by_standby(client, case, standby)

            took_over_early = wait_until(standby_pushed, bound_s + 0.5, interval_s=0.02)
            if took_over_early:
                time.sleep(AFTER_S)
        finally:
            leader.stop()
            if standby is not None:
                standby.stop()
            monitor.stop()

    took_over, gap_s, worst_s = analyse(monitor.pushes, score_of, signal_at_s, bound_s)
    if not took_over:
        notes.append(f"no push within {bound_s:g} s of the signal")
    return Outcome(
        case=case.name,
        scheduler=case.scheduler,
        stop=case.stop,
        settings=" ".join([*case.flags, *(f"{k} {v}" for k, v in case.server_config)]) or "defaults",
        took_over=took_over,
        gap_s=gap_s,
        worst_late_s=worst_s,
        lease_left_s=lease_left_ms / 1000 if lease_left_ms and lease_left_ms > 0 else None,
        bound_s=bound_s,
        pushes=len(monitor.pushes),
        notes=notes,
    )


def _held_by_standby(client: redis.Redis, case: Case, standby: ChildProcess | None) -> bool:
    """Return whether the lease now belongs to the standby rather than the stopped leader."""
    if standby is None:
        return False
    holder = client.get(LEASE_KEY)
    if holder is None:
        return False
    if case.scheduler == "schedulerd":
        pid = client.hget(f"rq:scheduler:{holder.decode()}", "pid")
        return pid is not None and int(pid) == standby.pid
    # An RQ scheduler's lock holds its name; its info hash names the pid of the forked scheduler,
    # whose parent is the standby worker.
    pid = client.hget(f"rq:scheduler:{holder.decode()}", "pid")
    if pid is None:
        return False
    try:
        status = Path(f"/proc/{int(pid)}/status").read_text()
    except OSError:
        return False
    parent = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "0")
    return int(parent) == standby.pid


def shown_seconds(outcome: Outcome, value: float | None) -> str:
    if not outcome.took_over:
        return f"> {outcome.bound_s:g}"
    return "-" if value is None else f"{value:.3f}"


def print_outcomes(outcomes: Sequence[Outcome]) -> None:
    reference = {}
    for outcome in outcomes:
        if outcome.scheduler == "schedulerd" and outcome.settings == "defaults":
            reference[outcome.stop] = outcome
    rows = []
    for outcome in outcomes:
        mine = reference.get(outcome.stop)
        if outcome.scheduler == "RQ" and mine is not None:
            other = outcome.gap_s if outcome.took_over else outcome.bound_s
            prefix = "" if outcome.took_over else "< "
            shown_ratio = "-" if not mine.took_over else prefix + ratio(mine.gap_s, other)
        else:
            shown_ratio = "-"
        rows.append([
            outcome.case,
            shown_seconds(outcome, outcome.gap_s),
            shown_seconds(outcome, outcome.worst_late_s),
            "-" if outcome.lease_left_s is None else f"{outcome.lease_left_s:.2f}",
            shown_ratio,
            "; ".join(outcome.notes),
        ])
    print()
    print(table(["case", "gap s", "worst late s", "lease left s", "schedulerd ÷ this (gap)", "note"], rows))


def main() -> None:
    install_cleanup()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound", type=float, default=15.0, help="seconds to wait for a takeover (default 15)")
    parser.add_argument("--quick", action="store_true", help="three cases, 12 s bound")
    parser.add_argument("--only", default="", help="run only cases whose name contains this text")
    parser.add_argument("--redis-server", type=Path, default=None, help="redis-server binary")
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/failover.json, failover-quick.json with --quick)")
    args = parser.parse_args()
    cases = list(CASES)
    if args.quick:
        args.bound = min(args.bound, 12.0)
        cases = [case for case in cases if case.name in QUICK_CASES]
    if args.only:
        cases = [case for case in cases if args.only in case.name]
    binary = args.redis_server or default_binary()
    info = machine(binary)
    print_machine(info)

    log_dir = Path(tempfile.mkdtemp(prefix="schedulerd-bench-failover-"))
    outcomes = [run_case(binary, case, args.bound, log_dir) for case in cases]
    print_outcomes(outcomes)
    path = write_json("failover-quick" if args.quick else "failover", {
        "machine": info,
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "results": [asdict(outcome) for outcome in outcomes],
    }, args.json)
    print(f"\nresults: {path}; child logs: {log_dir}")


if __name__ == "__main__":
    main()
