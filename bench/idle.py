"""Idle cost: what a scheduler costs Redis and the host while nothing is due.

    bench/.venv/bin/python bench/idle.py            # 1, 100 and 1,000 queues, 10 s each
    bench/.venv/bin/python bench/idle.py --quick    # 1 and 100 queues, 3 s each

For each queue count, a fresh redis-server gets one scheduler with default settings and empty
scheduled sets. Once it holds every lease and a settling pause has passed, the benchmark reads,
over the measuring window:

  commands/s   the rise in INFO commandstats calls per second. Redis counts the commands a Lua
               script runs as well as the EVALSHA that ran it; the INFO calls of this
               benchmark are left out.
  scripts/s    EVALSHA and EVAL calls per second alone
  redis CPU    the rise in used_cpu_user + used_cpu_sys of the server, as % of one core
  daemon CPU   utime + stime of the scheduler process from /proc/<pid>/stat, as % of one core
  daemon RSS   VmRSS of the scheduler process at the end of the window

The schedulers: `schedulerd run` and RQ 2.12's RQScheduler.work() (interval 1 s), the
scheduler process that `rq worker --with-scheduler` forks, without the worker around it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from harness.processes import ChildProcess, install_cleanup, wait_until
from harness.report import machine, print_machine, ratio, table, write_json
from harness.server import RedisServer, default_binary

BENCH_DIR = Path(__file__).resolve().parent
SETTLE_S = 3.0
START_TIMEOUT_S = 60.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    scheduler: str
    queues: int
    window_s: float
    commands_per_s: float
    scripts_per_s: float
    top_commands: str
    redis_cpu_pct: float
    daemon_cpu_pct: float | None
    daemon_rss_mb: float | None


def queue_names(count: int) -> list[str]:
    return [f"q{index:04d}" for index in range(count)]


def process_cpu_s(pid: int) -> float:
    """Return utime + stime of ``pid`` in seconds, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; the fields after its closing bracket are fixed.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def process_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def scheduler_argv(scheduler: str, url: str, queues: Sequence[str]) -> list[str]:
    bin_dir = Path(sys.executable).parent
    if scheduler == "schedulerd":
        return [str(bin_dir / "schedulerd"), "run", "--queues", ",".join(queues), "--redis-url", url,
                "--log-format", "json"]
    return [sys.executable, "-m", "harness.runners", "rq-loop", "--url", url, "--queues", ",".join(queues)]


def measure(client: redis.Redis, pid: int | None, window_s: float) -> tuple[dict[str, int], float, float | None, float]:
    """Return (command call rises, redis CPU s, daemon CPU s, elapsed s) over ``window_s``."""
    calls_before = command_calls(client)
    cpu_before = redis_cpu_s(client)
    daemon_before = process_cpu_s(pid) if pid else None
    started = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - started
    daemon_after = process_cpu_s(pid) if pid else None
    cpu_after = redis_cpu_s(client)
    calls_after = command_calls(client)

    rises = {name: calls_after[name] - calls_before.get(name, 0) for name in calls_after}
    # This benchmark's own INFO calls (commandstats twice, cpu twice) are not the scheduler's.
    rises.pop("info", None)
    daemon_cpu = None if daemon_before is None or daemon_after is None else daemon_after - daemon_before
    return rises, cpu_after - cpu_before, daemon_cpu, elapsed


def run_one(binary: Path, scheduler: str, count: int, window_s: float, log_dir: Path) -> Sample:
    queues = queue_names(count)
    with RedisServer(binary) as server:
        client = server.client()
        child: ChildProcess | None = None
        if scheduler != "none":
            child = ChildProcess(scheduler_argv(scheduler, server.url, queues),
                                 log_path=log_dir / f"{scheduler}-{count}.log", cwd=BENCH_DIR)
            lease_keys = [f"rq:scheduler-lock:{queue}" for queue in queues]

            def all_leased() -> bool:
                return client.exists(*lease_keys) == count or not child.alive()

            if not wait_until(all_leased, START_TIMEOUT_S, interval_s=0.1) or not child.alive():
                tail = " | ".join(child.log_text().strip().splitlines()[-3:])
                child.stop()
                raise RuntimeError(f"{scheduler} did not take {count} leases within {START_TIMEOUT_S} s; log: {tail}")
        try:
            time.sleep(SETTLE_S)
            rises, redis_cpu, daemon_cpu, elapsed = measure(client, child.pid if child else None, window_s)
            rss = process_rss_mb(child.pid) if child else None
        finally:
            if child is not None:
                child.stop()

    total = sum(rises.values())
    scripts = rises.get("evalsha", 0) + rises.get("eval", 0)
    top = sorted(((calls, name) for name, calls in rises.items() if calls > 0), reverse=True)[:4]
    return Sample(
        scheduler=scheduler,
        queues=count,
        window_s=elapsed,
        commands_per_s=total / elapsed,
        scripts_per_s=scripts / elapsed,
        top_commands=", ".join(f"{name} {calls / elapsed:,.0f}" for calls, name in top),
        redis_cpu_pct=100 * redis_cpu / elapsed,
        daemon_cpu_pct=None if daemon_cpu is None else 100 * daemon_cpu / elapsed,
        daemon_rss_mb=rss,
    )


def print_samples(samples: Sequence[Sample]) -> None:
    mine = {sample.queues: sample for sample in samples if sample.scheduler == "schedulerd"}
    rows = []
    for sample in samples:
        reference = mine.get(sample.queues)
        if sample.scheduler == "RQ" and reference is not None:
            ratio_text = (f"cmds {ratio(reference.commands_per_s, sample.commands_per_s)}, "
                     f"redis CPU {ratio(reference.redis_cpu_pct, sample.redis_cpu_pct)}, "
                     f"CPU {ratio(reference.daemon_cpu_pct, sample.daemon_cpu_pct)}, "
                     f"RSS {ratio(reference.daemon_rss_mb, sample.daemon_rss_mb)}")
        else:
            ratio_text = "-"
        rows.append([
            sample.scheduler, sample.queues if sample.scheduler != "none" else "-", sample.commands_per_s,
            sample.scripts_per_s, sample.redis_cpu_pct, sample.daemon_cpu_pct, sample.daemon_rss_mb,
            sample.top_commands, ratio_text,
        ])
    print()
    print(table(
        ["scheduler", "queues", "commands/s", "scripts/s", "redis CPU %", "daemon CPU %", "daemon RSS MB",
         "top commands per s", "schedulerd ÷ this"],
        rows,
    ))


def main() -> None:
    install_cleanup()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", default="1,100,1000", help="queue counts (default 1,100,1000)")
    parser.add_argument("--window", type=float, default=10.0, help="measuring window, seconds")
    parser.add_argument("--quick", action="store_true", help="1 and 100 queues, 3 s windows")
    parser.add_argument("--redis-server", type=Path, default=None, help="redis-server binary")
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/idle.json, idle-quick.json with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.queues = "1,100"
        args.window = 3.0
    binary = args.redis_server or default_binary()
    info = machine(binary)
    print_machine(info)

    log_dir = Path(tempfile.mkdtemp(prefix="schedulerd-bench-idle-"))
    samples = [run_one(binary, "none", 0, args.window, log_dir)]
    for count in (int(value) for value in args.queues.split(",")):
        for scheduler in ("schedulerd", "RQ"):
            samples.append(run_one(binary, scheduler, count, args.window, log_dir))
    print_samples(samples)
    path = write_json("idle-quick" if args.quick else "idle", {
        "machine": info,
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "results": [asdict(sample) for sample in samples],
    }, args.json)
    print(f"\nresults: {path}; child logs: {log_dir}")


if __name__ == "__main__":
    main()
