"""What a promote call costs per job: promote_due.lua against simpler variants, batch sizes and job sizes.

    bench/.venv/bin/python bench/promote_cost.py            # 50,000 jobs, median of 3 runs each
    bench/.venv/bin/python bench/promote_cost.py --quick    # 10,000 jobs, 1 run each

Each measurement drains a backlog of due RQ jobs from one queue on a fresh redis-server, calling
one script flat out. The server time per job is the sum of the script's call durations in SLOWLOG
divided by the jobs moved. The wall rate also includes the client's round trips. Each figure is the
median of --repeat runs, except the longest call (the maximum of all runs) and the count of
calls over 5 ms (summed over all runs). Jobs of 20 KB are measured with 10,240 of them, to bound
the server's memory. The variants, each
adding to the one before (bench/lua/):

  bare_move.lua         ZRANGEBYSCORE, then ZREM + RPUSH per id
  move_read_hash.lua    + lease check + HMGET of the 8 job fields promote_due.lua reads
  move_write_hash.lua   + HSET of status, enqueued_at, origin
  promote_due.lua       schedulerd's script (pcall, quarantine checks, SADD, the reply)
  promote_due_bulk.lua  promote_due.lua with one ZREMRANGEBYRANK and one RPUSH per call
  promote_due_lean.lua  promote_due_bulk.lua that checks the data field with HSTRLEN instead
                        of reading the payload into Lua
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from harness import jobs
from harness.processes import install_cleanup
from harness.report import machine, percentile, print_machine, table, write_json
from harness.server import RedisServer, default_binary
from schedulerd.keys import Keys
from schedulerd.lease import Leases
from schedulerd.promoter import Promoter
from schedulerd.scripts import PROMOTE_DUE

LUA_DIR = Path(__file__).resolve().parent / "lua"
SERVER_CONFIG = {"slowlog-log-slower-than": "50", "slowlog-max-len": "100000"}
QUEUE = "default"
DEFAULT_JOB_TIMEOUT_S = 180
OVER_MS = 5.0
MAX_PAYLOAD_BYTES = 200 * 1024 * 1024

# Variant name -> (script source, argument style).
VARIANTS = {
    "bare_move": ((LUA_DIR / "bare_move.lua").read_text(), "bare"),
    "move_read_hash": ((LUA_DIR / "move_read_hash.lua").read_text(), "lease"),
    "move_write_hash": ((LUA_DIR / "move_write_hash.lua").read_text(), "lease"),
    "promote_due": (PROMOTE_DUE.source, "promote"),
    "promote_due_bulk": ((LUA_DIR / "promote_due_bulk.lua").read_text(), "promote"),
    "promote_due_lean": ((LUA_DIR / "promote_due_lean.lua").read_text(), "promote"),
}


@dataclass
class Measurement:
    variant: str
    batch_size: int
    payload: str
    hash_encoding: str
    moved: int
    wall_s: float
    jobs_per_s: float
    server_us_per_job: float
    server_jobs_per_s: float
    call_p50_ms: float
    call_max_ms: float
    calls_over_ms: int
    runs: int = 1


def call_once(client: redis.Redis, sha: str, style: str, token: str, batch_size: int) -> tuple[int, bool]:
    """Run one script call; return (ids moved, more ids due)."""
    scheduled = f"rq:scheduled:{QUEUE}"
    queue_list = f"rq:queue:{QUEUE}"
    lease = f"rq:scheduler-lock:{QUEUE}"
    if style == "bare":
        moved = int(client.evalsha(sha, 2, scheduled, queue_list, batch_size))
        return moved, moved == batch_size
    if style == "lease":
        moved = int(client.evalsha(sha, 3, lease, scheduled, queue_list, token, batch_size, "rq:job:", QUEUE))
        return moved, moved == batch_size
    # The variants get exactly the keys and arguments schedulerd sends.
    promoter = Promoter(client, Keys(), batch_size, DEFAULT_JOB_TIMEOUT_S)
    keys = promoter.call_keys(QUEUE)
    args = promoter.call_args(QUEUE, token)
    reply = client.evalsha(sha, len(keys), *keys, *args)
    if reply[0] != 1:
        raise RuntimeError(f"{sha}: the lease was not held")
    next_due = reply[4]
    return int(reply[1]), bool(next_due) and float(next_due) <= float(reply[3])


def measure(binary: Path, variant: str, batch_size: int, payload: str, job_count: int) -> Measurement:
    source, style = VARIANTS[variant]
    with RedisServer(binary, SERVER_CONFIG) as server:
        client = server.client()
        ids = jobs.schedule_rq_jobs(client, QUEUE, [int(time.time()) - 60] * job_count, payload=payload)
        encoding = client.object("encoding", f"rq:job:{ids[0]}").decode()
        leases = Leases(client, Keys(), ttl_ms=600_000)
        leases.contest([QUEUE])
        sha = client.script_load(source)
        client.slowlog_reset()

        moved = 0
        more = True
        started = time.perf_counter()
        while more:
            count, more = call_once(client, sha, style, leases.token, batch_size)
            moved += count
        wall_s = time.perf_counter() - started

        prefix = f"EVALSHA {sha}".encode()
        calls_ms = [entry["duration"] / 1000 for entry in client.slowlog_get(100_000) if entry["command"].startswith(prefix)]
        if client.llen(f"rq:queue:{QUEUE}") != job_count:
            raise RuntimeError(f"{variant}: {client.llen(f'rq:queue:{QUEUE}')} ids on the queue list, expected {job_count}")
    server_us = sum(calls_ms) * 1000 / moved
    return Measurement(
        variant=variant,
        batch_size=batch_size,
        payload=payload,
        hash_encoding=encoding,
        moved=moved,
        wall_s=wall_s,
        jobs_per_s=moved / wall_s,
        server_us_per_job=server_us,
        server_jobs_per_s=1e6 / server_us,
        call_p50_ms=percentile(calls_ms, 0.5),
        call_max_ms=max(calls_ms),
        calls_over_ms=sum(1 for value in calls_ms if value > OVER_MS),
    )


def measure_median(binary: Path, variant: str, batch_size: int, payload: str, job_count: int, runs: int) -> Measurement:
    """Measure ``runs`` times on fresh servers; keep the median of the rates and the worst call."""
    size = jobs.PAYLOADS[payload]
    if size:
        # Bound the backlog's memory: 20 KB jobs are measured with fewer of them.
        job_count = min(job_count, MAX_PAYLOAD_BYTES // size)
    results = [measure(binary, variant, batch_size, payload, job_count) for _ in range(runs)]
    median = sorted(results, key=lambda m: m.server_us_per_job)[len(results) // 2]
    median.jobs_per_s = sorted(m.jobs_per_s for m in results)[len(results) // 2]
    median.call_max_ms = max(m.call_max_ms for m in results)
    median.calls_over_ms = sum(m.calls_over_ms for m in results)
    median.runs = runs
    return median


def print_measurements(title: str, measurements: Sequence[Measurement]) -> None:
    print(f"\n### {title}\n")
    rows = [
        [m.variant, m.batch_size, m.payload, m.hash_encoding, m.moved, m.jobs_per_s, m.server_us_per_job,
         m.server_jobs_per_s, m.call_p50_ms, m.call_max_ms, m.calls_over_ms]
        for m in measurements
    ]
    print(table(
        ["script", "batch", "job", "hash encoding", "jobs", "jobs/s (wall)", "server us/job", "server jobs/s",
         "call p50 ms", "call max ms", f"calls > {OVER_MS:g} ms"],
        rows,
    ))


def main() -> None:
    install_cleanup()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50_000, help="due jobs per measurement (default 50,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, median kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="10,000 jobs, one run per measurement")
    parser.add_argument("--batch-sizes", default="100,250,1000,2000", help="batch sizes for promote_due.lua")
    parser.add_argument("--redis-server", type=Path, default=None, help="redis-server binary")
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/promote_cost.json, promote_cost-quick.json with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.jobs = 10_000
        args.repeat = 1
    binary = args.redis_server or default_binary()
    info = machine(binary)
    print_machine(info)

    runs = args.repeat
    variants = [measure_median(binary, name, 500, "typical", args.jobs, runs) for name in VARIANTS]
    print_measurements("script variants, batch 500, typical job", variants)

    batches = [measure_median(binary, "promote_due", int(size), "typical", args.jobs, runs)
               for size in args.batch_sizes.split(",")]
    print_measurements("promote_due.lua by batch size, typical job", batches)

    payloads = [measure_median(binary, name, 500, payload, args.jobs, runs)
                for payload in ("tiny", "2KB", "20KB") for name in ("promote_due", "promote_due_bulk", "promote_due_lean")]
    print_measurements("job size, batch 500 (typical: see the first table)", payloads)

    path = write_json("promote_cost-quick" if args.quick else "promote_cost", {
        "machine": info,
        "jobs": args.jobs,
        "results": [asdict(m) for m in variants + batches + payloads],
    }, args.json)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
