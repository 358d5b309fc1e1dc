"""Lateness: how long after its due time each job lands on its queue list.

    bench/.venv/bin/python bench/lateness.py            # 3,000 jobs over 10 s, writes docs/lateness.png
    bench/.venv/bin/python bench/lateness.py --quick    # 1,000 jobs over 4 s

Each run schedules jobs over a window on a fresh redis-server and starts one scheduler with its
default settings a few seconds before the first job falls due:

  schedulerd   `schedulerd run` (poll interval 1 s; it also wakes when the next job falls due)
  RQ           RQ 2.12's RQScheduler.work(), interval 1 s, as `rq worker --with-scheduler` runs it

Scores come in two kinds: fractional (uniform over the window, as a producer that keeps
sub-second due times writes them) and whole seconds (as RQ 2.12's enqueue_at writes them: it
truncates the due time to the second).

Lateness is the server time at which the id could first be popped from the queue list minus the
id's score, and it is observed in one of two ways (--observer):

  blpop    (default) a consumer thread blocks in BLPOP like a worker and stamps what it pops
           with the server's TIME (harness/consumer.py). Ids pushed by one script or one
           MULTI/EXEC become visible together when it ends, and this is when a worker could
           first have taken them. The stamp trails by one wake-up and round trip of the consumer.
  monitor  MONITOR gives the server time of each push itself, even inside a script
           (harness/monitor.py). But the server then formats every command for MONITOR, which
           slows a promote call several times over, so a burst of jobs due at the same second
           spreads out more than it does without an observer.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import jobs
from harness.consumer import QueueConsumer
from harness.monitor import PushMonitor
from harness.processes import ChildProcess, install_cleanup, wait_until
from harness.report import machine, percentile, print_machine, ratio, table, write_json
from harness.server import RedisServer, default_binary

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_PLOT = BENCH_DIR.parent / "docs" / "lateness.png"
QUICK_PLOT = BENCH_DIR / "results" / "lateness-quick.png"
QUEUE = "default"
LEAD_S = 3.0
DRAIN_GRACE_S = 5.0


@dataclass
class Outcome:
    scheduler: str
    scores: str
    jobs: int
    promoted: int
    pushed_twice: int
    early: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    lateness_ms: list[float]


def schedulerd_argv(url: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "schedulerd"), "run",
        "--queues", QUEUE, "--redis-url", url, "--log-format", "json",
    ]


def rq_argv(url: str) -> list[str]:
    return [sys.executable, "-m", "harness.runners", "rq-loop", "--url", url, "--queues", QUEUE]


def make_scores(kind: str, count: int, start_s: float, window_s: float, rng: random.Random) -> list[float]:
    due = sorted(start_s + rng.uniform(0.0, window_s) for _ in range(count))
    if kind == "whole":
        return [float(int(value)) for value in due]
    return due


def observe(
    server: RedisServer, scheduler: str, kind: str, count: int, last_due_s: float, observer: str, log_dir: Path
) -> list[tuple[float, str]]:
    """Run ``scheduler`` until ``count`` ids arrived or the last due time plus a grace passed.

    Return (server time, job id) for every id seen arriving, in arrival order.
    """
    queue_key = f"rq:queue:{QUEUE}"
    if observer == "monitor":
        watcher: PushMonitor | QueueConsumer = PushMonitor(server.client()).start()
    else:
        watcher = QueueConsumer(server.client(), queue_key, count).start()
    argv = schedulerd_argv(server.url) if scheduler == "schedulerd" else rq_argv(server.url)
    child = ChildProcess(argv, log_path=log_dir / f"{scheduler}-{kind}.log", cwd=BENCH_DIR)
    client = server.client()

    def arrived() -> bool:
        if isinstance(watcher, QueueConsumer):
            return watcher.done
        return len(watcher.pushes) >= count

    try:
        wait_until(arrived, timeout_s=last_due_s - time.time() + DRAIN_GRACE_S, interval_s=0.05)
    finally:
        child.stop()
        watcher.stop()
        client.close()
    if isinstance(watcher, QueueConsumer):
        return [(arrival.at_s, arrival.job_id) for arrival in watcher.arrivals]
    return [(push.at_s, push.job_id) for push in watcher.pushes]


def run_case(
    binary: Path, scheduler: str, kind: str, count: int, window_s: float, seed: int, observer: str, log_dir: Path
) -> Outcome:
    rng = random.Random(seed)
    with RedisServer(binary) as server:
        client = server.client()
        start_s = time.time() + LEAD_S
        scores = make_scores(kind, count, start_s, window_s, rng)
        ids = jobs.schedule_rq_jobs(client, QUEUE, scores)
        score_of = dict(zip(ids, scores))

        observations = observe(server, scheduler, kind, count, max(scores), observer, log_dir)

    first_seen: dict[str, float] = {}
    pushed_twice = 0
    for at_s, job_id in observations:
        if job_id in first_seen:
            pushed_twice += 1
            continue
        first_seen[job_id] = at_s
    lateness_ms = [(first_seen[job_id] - score_of[job_id]) * 1000 for job_id in ids if job_id in first_seen]
    if not lateness_ms:
        raise RuntimeError(f"{scheduler} promoted nothing; see its log in {log_dir}")
    return Outcome(
        scheduler=scheduler,
        scores=kind,
        jobs=count,
        promoted=len(lateness_ms),
        pushed_twice=pushed_twice,
        early=sum(1 for value in lateness_ms if value < 0),
        p50_ms=percentile(lateness_ms, 0.50),
        p90_ms=percentile(lateness_ms, 0.90),
        p99_ms=percentile(lateness_ms, 0.99),
        max_ms=max(lateness_ms),
        lateness_ms=lateness_ms,
    )


def print_outcomes(outcomes: Sequence[Outcome]) -> None:
    reference = {o.scores: o for o in outcomes if o.scheduler == "schedulerd"}
    rows = []
    for outcome in outcomes:
        mine = reference.get(outcome.scores)
        ratio_text = "-" if outcome.scheduler == "schedulerd" or mine is None else (
            f"p50 {ratio(mine.p50_ms, outcome.p50_ms)}, p99 {ratio(mine.p99_ms, outcome.p99_ms)}"
        )
        rows.append([
            outcome.scheduler, outcome.scores, outcome.jobs, outcome.promoted, outcome.early,
            outcome.pushed_twice, outcome.p50_ms, outcome.p90_ms, outcome.p99_ms, outcome.max_ms, ratio_text,
        ])
    print()
    print(table(
        ["scheduler", "scores", "jobs", "promoted", "early", "pushed twice", "p50 ms", "p90 ms", "p99 ms",
         "max ms", "schedulerd ÷ this"],
        rows,
    ))


def plot(outcomes: Sequence[Outcome], path: Path, title_note: str) -> None:
    """Draw the empirical CDF of lateness per scheduler, one panel per score kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(outcome.scores for outcome in outcomes))
    figure, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False)
    colors = {"schedulerd": "tab:blue", "RQ": "tab:orange"}
    floor_ms = 0.01
    for axis, kind in zip(axes[0], kinds):
        for outcome in (o for o in outcomes if o.scores == kind):
            values = sorted(max(value, floor_ms) for value in outcome.lateness_ms)
            fractions = [(index + 1) / len(values) for index in range(len(values))]
            label = f"{outcome.scheduler}: p50 {outcome.p50_ms:.1f} ms, p99 {outcome.p99_ms:.1f} ms"
            if outcome.early:
                label += f", {outcome.early} early"
            axis.step(values, fractions, where="post", label=label, color=colors.get(outcome.scheduler))
        axis.set_xscale("log")
        axis.set_xlabel(f"lateness, ms (push time - score; values below {floor_ms} ms drawn at {floor_ms})")
        axis.set_ylabel("fraction of jobs")
        axis.set_title(f"{'fractional' if kind == 'fractional' else 'whole-second'} scores")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(f"Lateness of promoted jobs, default settings ({title_note})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    install_cleanup()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per run (default 3,000)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds the due times spread over")
    parser.add_argument("--quick", action="store_true", help="1,000 jobs over 4 s")
    parser.add_argument("--seed", type=int, default=1, help="seed of the due times")
    parser.add_argument("--observer", choices=("blpop", "monitor"), default="blpop", help="how arrivals are timed")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG to write (default docs/lateness.png, bench/results/lateness-quick.png with --quick)")
    parser.add_argument("--redis-server", type=Path, default=None, help="redis-server binary")
    parser.add_argument("--json", type=Path, default=None, help="result file (default bench/results/lateness.json, lateness-quick.json with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.jobs = 1000
        args.window = 4.0
    if args.plot is None:
        args.plot = QUICK_PLOT if args.quick else DEFAULT_PLOT
    binary = args.redis_server or default_binary()
    info = machine(binary)
    print_machine(info)

    log_dir = Path(tempfile.mkdtemp(prefix="schedulerd-bench-lateness-"))
    outcomes = []
    for kind in ("fractional", "whole"):
        for scheduler in ("schedulerd", "RQ"):
            outcomes.append(run_case(binary, scheduler, kind, args.jobs, args.window, args.seed, args.observer, log_dir))
    print_outcomes(outcomes)

    plot(outcomes, args.plot, f"{args.jobs:,} jobs over {args.window:g} s, observed by {args.observer}, {info['cpus']} CPUs")
    path = write_json("lateness-quick" if args.quick else "lateness", {
        "machine": info,
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "results": [{k: v for k, v in asdict(o).items() if k != "lateness_ms"} for o in outcomes],
    }, args.json)
    print(f"\nplot: {args.plot}; results: {path}; child logs: {log_dir}")


if __name__ == "__main__":
    main()
