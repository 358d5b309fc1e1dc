"""Drain throughput: how fast each scheduler moves a backlog of due jobs onto the queue lists.

    bench/.venv/bin/python bench/drain.py            # 100,000 jobs on 1 queue and on 100 queues
    bench/.venv/bin/python bench/drain.py --full     # adds 1,000,000 jobs on 1 queue
    bench/.venv/bin/python bench/drain.py --quick    # 10,000 jobs, shorter bounds

Every run gets a fresh redis-server of its own with the same backlog: job hashes as RQ 2.12 (or
rq-scheduler 0.14) writes them, all due 60 s ago. The contenders:

  schedulerd Promoter      Promoter.promote() called flat out, one pipelined call per pass
  schedulerd loop          Scheduler.run(), the daemon's loop, with default settings
  bare Lua move            ZRANGEBYSCORE, then ZREM + RPUSH per id (bench/lua/bare_move.lua): the ceiling
  RQ flat out              RQ 2.12 RQScheduler.enqueue_scheduled_jobs() in a tight loop
  RQ loop                  RQ 2.12 RQScheduler.work(), interval 1 s (at most 1,000 jobs per queue per pass)
  rq-scheduler             rq-scheduler 0.14 Scheduler.enqueue_jobs(), its own scheduled-jobs key

The alternatives are stopped after a bound (--bound, --loop-bound) and report their rate over the
time they ran; schedulerd's loop runs until the backlog is gone (at most 120 s). The maximum server-side call duration comes from SLOWLOG for Lua scripts (microseconds,
logged above 100 us) and from the latency monitor (whole milliseconds) for everything else,
because Redis keeps MULTI/EXEC out of SLOWLOG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from harness import jobs
from harness.processes import ChildProcess, install_cleanup
from harness.report import machine, percentile, print_machine, ratio, table, write_json
from harness.server import RedisServer, default_binary
from schedulerd.config import Settings
from schedulerd.keys import Keys
from schedulerd.lease import Leases
from schedulerd.promoter import Promoter
from schedulerd.scripts import PROMOTE_DUE

BENCH_DIR = Path(__file__).resolve().parent
BARE_MOVE_LUA = (BENCH_DIR / "lua" / "bare_move.lua").read_text(encoding="utf-8")
SERVER_CONFIG = {
    # Redis 7 logs the commands inside a script too, so a threshold of 0 would flood SLOWLOG.
    # Every promote call of a full batch takes far longer than 100 us.
    "slowlog-log-slower-than": "100",
    "slowlog-max-len": "100000",
    "latency-monitor-threshold": "1",
}
DEFAULT_JOB_TIMEOUT_S = 180
POLL_INTERVAL_S = 0.005
START_TIMEOUT_S = 30.0
OVER_MS = 5.0
DAEMON_BOUND_S = 120.0

# Sums the lengths of the queue lists in KEYS, so one call per poll covers 100 queues.
SUM_LENGTHS_LUA = """
local total = 0
for i = 1, #KEYS do
  total = total + redis.call('LLEN', KEYS[i])
end
return total
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    queues: tuple[str, ...]


@dataclass
class Result:
    scenario: str
    contender: str
    mode: str
    """"flat" (no pause between calls) or "loop" (the scheduler's own timing)."""
    jobs: int
    moved: int
    seconds: float
    jobs_per_s: float
    complete: bool
    max_call_ms: float | None = None
    max_call_source: str = ""
    calls_over_ms: int | None = None
    call_p50_ms: float | None = None
    call_p99_ms: float | None = None
    runs: int = 1
    rates: list[float] = field(default_factory=list)
    note: str = ""


def queue_names(count: int) -> tuple[str, ...]:
    if count == 1:
        return ("default",)
    return tuple(f"q{index:03d}" for index in range(count))


def prepare_rq(client: redis.Redis, scenario: Scenario) -> None:
    """Schedule ``scenario.jobs`` RQ jobs spread evenly over its queues, all due 60 s ago."""
    due_s = int(time.time()) - 60
    per_queue = scenario.jobs // len(scenario.queues)
    for queue in scenario.queues:
        jobs.schedule_rq_jobs(client, queue, [due_s] * per_queue)


def prepare_rq_scheduler(client: redis.Redis, scenario: Scenario) -> None:
    due_s = int(time.time()) - 60
    per_queue = scenario.jobs // len(scenario.queues)
    for queue in scenario.queues:
        jobs.schedule_rq_scheduler_jobs(client, queue, [due_s] * per_queue)


def reset_server_stats(client: redis.Redis) -> None:
    client.slowlog_reset()
    client.execute_command("LATENCY", "RESET")


def script_call_times_ms(client: redis.Redis, sha: str) -> list[float]:
    """Durations of the EVALSHA calls of ``sha`` that SLOWLOG kept (those over its threshold), in ms."""
    prefix = f"EVALSHA {sha}".encode()
    entries = client.slowlog_get(100_000)
    return [entry["duration"] / 1000 for entry in entries if entry["command"].startswith(prefix)]


def latency_monitor_max_ms(client: redis.Redis) -> float | None:
    """Return the maximum command duration the latency monitor recorded, in whole ms, or None below 1 ms."""
    maximum_ms = None
    for event, _, _, max_ms in client.execute_command("LATENCY", "LATEST"):
        if event in (b"command", b"fast-command"):
            maximum_ms = max(maximum_ms or 0, int(max_ms))
    return maximum_ms


def check_promoted(client: redis.Redis, scenario: Scenario) -> str:
    """Return a note when a promoted job does not look like RQ's own enqueue left it."""
    job_id = client.lindex(f"rq:queue:{scenario.queues[0]}", 0)
    if job_id is None:
        return "no job on the queue list"
    status = client.hget(f"rq:job:{job_id.decode()}", "status")
    if status != b"queued":
        return f"promoted job has status {status!r}, expected b'queued'"
    return ""


def fill_script_stats(result: Result, times_ms: Sequence[float]) -> None:
    if not times_ms:
        return
    result.max_call_ms = max(times_ms)
    result.max_call_source = "slowlog"
    result.calls_over_ms = sum(1 for value in times_ms if value > OVER_MS)
    result.call_p50_ms = percentile(times_ms, 0.5)
    result.call_p99_ms = percentile(times_ms, 0.99)


# schedulerd and the ceiling, in this process


def run_promoter(server: RedisServer, scenario: Scenario, batch_size: int) -> Result:
    client = server.client()
    prepare_rq(client, scenario)
    keys = Keys()
    leases = Leases(client, keys, ttl_ms=600_000)
    if set(leases.contest(scenario.queues)) != set(scenario.queues):
        raise RuntimeError("the Promoter run could not take every lease on its own server")
    promoter = Promoter(client, keys, batch_size, DEFAULT_JOB_TIMEOUT_S)
    # Load the script before the clock starts, as a running daemon has it loaded.
    client.script_load(PROMOTE_DUE.source)
    reset_server_stats(client)

    moved = 0
    pending = list(scenario.queues)
    started = time.perf_counter()
    while pending:
        results = promoter.promote(pending, leases.token)
        pending = []
        for outcome in results:
            if outcome.fenced or outcome.error:
                raise RuntimeError(f"promote call failed on {outcome.queue}: {outcome}")
            moved += outcome.moved
            if outcome.backlog_left:
                pending.append(outcome.queue)
    seconds = time.perf_counter() - started

    result = Result(scenario.name, "schedulerd Promoter", "flat", scenario.jobs, moved, seconds,
                    moved / seconds, moved == scenario.jobs)
    fill_script_stats(result, script_call_times_ms(client, PROMOTE_DUE.sha))
    result.note = check_promoted(client, scenario)
    return result


def run_bare(server: RedisServer, scenario: Scenario, batch_size: int) -> Result:
    client = server.client()
    prepare_rq(client, scenario)
    sha = client.script_load(BARE_MOVE_LUA)
    reset_server_stats(client)

    moved = 0
    pending = list(scenario.queues)
    started = time.perf_counter()
    while pending:
        with client.pipeline(transaction=False) as pipe:
            for queue in pending:
                pipe.evalsha(sha, 2, f"rq:scheduled:{queue}", f"rq:queue:{queue}", batch_size)
            counts = pipe.execute()
        moved += sum(counts)
        pending = [queue for queue, count in zip(pending, counts) if count == batch_size]
    seconds = time.perf_counter() - started

    result = Result(scenario.name, "bare Lua move", "flat", scenario.jobs, moved, seconds,
                    moved / seconds, moved == scenario.jobs)
    fill_script_stats(result, script_call_times_ms(client, sha))
    result.note = "ceiling: job hashes untouched"
    return result


# Contenders in child processes, watched through the queue lists


@dataclass
class Watch:
    moved: int
    seconds: float
    jobs_per_s: float
    complete: bool
    note: str = ""


def watch_child(
    server: RedisServer,
    argv: Sequence[str],
    scenario: Scenario,
    bound_s: float,
    log_path: Path,
) -> Watch:
    """Start ``argv``, poll the queue lists, and stop it when all jobs moved or ``bound_s`` passed.

    ``seconds`` runs from the last poll that saw nothing moved, so interpreter start-up is left
    out and the time is at most one poll interval longer than the drain. A complete drain's rate
    is jobs / seconds; a run stopped at the bound counts only what moved after the first poll
    that saw a job moved, so the first batch (which RQ's loop moves at once) is not credited
    to the bound.
    """
    client = server.client()
    sum_lengths = client.register_script(SUM_LENGTHS_LUA)
    queue_keys = [f"rq:queue:{queue}" for queue in scenario.queues]

    child = ChildProcess(argv, log_path=log_path, cwd=BENCH_DIR)
    started_at = time.perf_counter()
    last_zero_at = started_at
    first_at: float | None = None
    first_moved = 0
    moved = 0
    now = last_zero_at
    try:
        while True:
            moved = int(sum_lengths(keys=queue_keys))
            now = time.perf_counter()
            if moved == 0:
                last_zero_at = now
                if now - started_at > START_TIMEOUT_S or not child.alive():
                    break
            elif first_at is None:
                first_at, first_moved = now, moved
            if moved >= scenario.jobs:
                break
            if first_at is not None and now - first_at >= bound_s:
                break
            if not child.alive() and moved > 0:
                # A one-shot run (rq-scheduler) may exit between two polls.
                moved = int(sum_lengths(keys=queue_keys))
                now = time.perf_counter()
                break
            time.sleep(POLL_INTERVAL_S)
    finally:
        child.stop(timeout_s=5.0)

    if first_at is None:
        tail = " | ".join(child.log_text().strip().splitlines()[-3:])
        return Watch(0, 0.0, 0.0, False, note=f"moved nothing; log: {tail}")
    complete = moved >= scenario.jobs
    seconds = now - last_zero_at
    if complete:
        rate = moved / seconds
    else:
        # A bounded run: count only what moved after the first poll that saw a job moved.
        rate = (moved - first_moved) / (now - first_at)
    return Watch(moved, seconds, rate, complete)


def run_daemon(server: RedisServer, scenario: Scenario, batch_size: int, log_dir: Path, bound_s: float) -> Result:
    client = server.client()
    prepare_rq(client, scenario)
    client.script_load(PROMOTE_DUE.source)
    reset_server_stats(client)
    argv = [
        sys.executable, "-m", "harness.runners", "schedulerd",
        "--url", server.url,
        "--queues", ",".join(scenario.queues),
        "--batch-size", str(batch_size),
    ]
    watch = watch_child(server, argv, scenario, bound_s, log_dir / "schedulerd-drain.log")
    result = Result(scenario.name, "schedulerd loop", "loop", scenario.jobs, watch.moved, watch.seconds,
                    watch.jobs_per_s, watch.complete, note=watch.note)
    fill_script_stats(result, script_call_times_ms(client, PROMOTE_DUE.sha))
    result.note = result.note or check_promoted(client, scenario)
    return result


def run_rq(server: RedisServer, scenario: Scenario, kind: str, bound_s: float, log_dir: Path) -> Result:
    client = server.client()
    if kind == "rq-scheduler":
        prepare_rq_scheduler(client, scenario)
    else:
        prepare_rq(client, scenario)
    reset_server_stats(client)
    argv = [sys.executable, "-m", "harness.runners", kind, "--url", server.url, "--queues", ",".join(scenario.queues)]
    watch = watch_child(server, argv, scenario, bound_s, log_dir / f"{kind}.log")
    names = {
        "rq-flat": ("RQ flat out", "flat"),
        "rq-loop": ("RQ loop", "loop"),
        "rq-scheduler": ("rq-scheduler", "flat"),
    }
    contender, mode = names[kind]
    result = Result(scenario.name, contender, mode, scenario.jobs, watch.moved, watch.seconds,
                    watch.jobs_per_s, watch.complete, note=watch.note)
    result.max_call_ms = latency_monitor_max_ms(client)
    result.max_call_source = "latency monitor"
    if not watch.complete and not result.note:
        result.note = f"stopped after {bound_s:g} s"
    result.note = result.note or check_promoted(client, scenario)
    return result


# Orchestration


def repeated(runs: int, function: Callable[[], Result]) -> Result:
    """Run ``function`` ``runs`` times; keep the median rate and the worst call of all runs."""
    results = [function() for _ in range(runs)]
    rates = [result.jobs_per_s for result in results]
    median_result = sorted(results, key=lambda result: result.jobs_per_s)[len(results) // 2]
    calls = [result.max_call_ms for result in results if result.max_call_ms is not None]
    median_result.max_call_ms = max(calls) if calls else None
    over = [result.calls_over_ms for result in results if result.calls_over_ms is not None]
    median_result.calls_over_ms = sum(over) if over else None
    median_result.runs = runs
    median_result.rates = rates
    return median_result


def run_scenario(args: argparse.Namespace, scenario: Scenario, log_dir: Path) -> list[Result]:
    binary = args.redis_server

    def fresh(function: Callable[[RedisServer], Result]) -> Callable[[], Result]:
        def run() -> Result:
            with RedisServer(binary, SERVER_CONFIG) as server:
                return function(server)
        return run

    results: list[Result] = []
    selected = set(args.only.split(",")) if args.only else None

    def wanted(key: str) -> bool:
        return selected is None or key in selected

    if wanted("promoter"):
        results.append(repeated(args.repeat, fresh(lambda s: run_promoter(s, scenario, args.batch_size))))
    if wanted("daemon"):
        # schedulerd's loop runs until the backlog is gone; the bound only stops a stuck run.
        daemon_bound_s = max(args.loop_bound, DAEMON_BOUND_S)
        results.append(repeated(args.repeat, fresh(lambda s: run_daemon(s, scenario, args.batch_size, log_dir, daemon_bound_s))))
    if wanted("bare"):
        results.append(repeated(args.repeat, fresh(lambda s: run_bare(s, scenario, args.batch_size))))
    if wanted("rq-flat"):
        results.append(fresh(lambda s: run_rq(s, scenario, "rq-flat", args.bound, log_dir))())
    if wanted("rq-loop"):
        results.append(fresh(lambda s: run_rq(s, scenario, "rq-loop", args.loop_bound, log_dir))())
    if wanted("rq-scheduler"):
        results.append(fresh(lambda s: run_rq(s, scenario, "rq-scheduler", args.bound, log_dir))())
    return results


def print_scenario(scenario: Scenario, results: Sequence[Result]) -> None:
    by_name = {result.contender: result for result in results}
    flat = by_name.get("schedulerd Promoter")
    loop = by_name.get("schedulerd loop")
    rows = []
    for result in results:
        reference = loop if result.mode == "loop" else flat
        shown_ratio = "-" if reference is result or reference is None else ratio(reference.jobs_per_s, result.jobs_per_s)
        if result.max_call_ms is None:
            max_call = "< 1" if result.max_call_source == "latency monitor" else None
        elif result.max_call_source == "latency monitor":
            max_call = f">= {result.max_call_ms:.0f}"
        else:
            max_call = f"{result.max_call_ms:.2f}"
        rows.append([
            result.contender,
            result.mode,
            result.moved,
            result.seconds,
            result.jobs_per_s,
            shown_ratio,
            max_call,
            result.calls_over_ms,
            "" if result.runs == 1 else f"median of {result.runs}",
            result.note,
        ])
    print(f"\n### {scenario.name}: {scenario.jobs:,} due jobs on {len(scenario.queues)} queue(s)\n")
    print(table(
        ["contender", "mode", "moved", "s", "jobs/s", "schedulerd ÷ this", "max call ms",
         f"calls > {OVER_MS:g} ms", "runs", "note"],
        rows,
    ))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000, help="due jobs per scenario (default 100,000)")
    parser.add_argument("--spread-queues", type=int, default=100, help="queues of the spread scenario")
    parser.add_argument("--full", action="store_true", help="also run 1,000,000 jobs on one queue")
    parser.add_argument("--quick", action="store_true", help="10,000 jobs, 1 run each, 3 s bounds")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size,
                        help=f"schedulerd and bare Lua batch, in jobs (default {Settings.batch_size}, schedulerd's default)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each schedulerd contender (median kept)")
    parser.add_argument("--bound", type=float, default=5.0, help="seconds a flat-out alternative may run")
    parser.add_argument("--loop-bound", type=float, default=10.0, help="seconds a scheduler loop may run")
    parser.add_argument("--only", default="", help="comma-separated subset: promoter,daemon,bare,rq-flat,rq-loop,rq-scheduler")
    parser.add_argument("--redis-server", type=Path, default=None, help="redis-server binary")
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/drain.json, drain-quick.json with --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = 10_000
        args.repeat = 1
        args.bound = 3.0
        args.loop_bound = 3.0
    args.redis_server = args.redis_server or default_binary()
    return args


def main() -> None:
    install_cleanup()
    args = parse_args()
    info = machine(args.redis_server)
    print_machine(info)

    scenarios = [
        Scenario("one queue", args.jobs, queue_names(1)),
        Scenario(f"{args.spread_queues} queues", args.jobs, queue_names(args.spread_queues)),
    ]
    if args.full:
        scenarios.append(Scenario("one queue, full", 1_000_000, queue_names(1)))

    log_dir = Path(tempfile.mkdtemp(prefix="schedulerd-bench-drain-"))
    all_results: list[Result] = []
    for scenario in scenarios:
        results = run_scenario(args, scenario, log_dir)
        print_scenario(scenario, results)
        all_results.extend(results)
    sys.stdout.flush()

    path = write_json("drain-quick" if args.quick else "drain", {
        "machine": info,
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "results": [asdict(result) for result in all_results],
    }, args.json)
    print(f"\nresults: {path}; child logs: {log_dir}")


if __name__ == "__main__":
    main()
