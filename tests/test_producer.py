"""schedulerd.producer with real RQ: fractional scores, valid RQ jobs, and prompt promotion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from schedulerd.keys import Keys
from tests.support.rq_processes import child_env
from tests.support.rqenvs import REPO_ROOT
from tests.support.waiting import wait_for

KEYS = Keys()
SCHEDULERD = str(Path(sys.executable).parent / "schedulerd")

# Runs under the RQ environment's interpreter: schedules one job with schedulerd.producer and
# prints its id and due time.
PRODUCER = """
import json, sys
from datetime import datetime, timedelta, timezone
from redis import Redis
from rq import Queue
from schedulerd import producer

url, delay_s, marker = sys.argv[1], float(sys.argv[2]), sys.argv[3]
queue = Queue("default", connection=Redis.from_url(url))
seconds, microseconds = queue.connection.time()
when = datetime.fromtimestamp(seconds + microseconds / 1e6 + delay_s, timezone.utc)
job = producer.enqueue_at(queue, when, "tests.support.rq_jobs.record", args=(marker,), ttl=600)
print(json.dumps({"id": job.id, "due": when.timestamp()}))
"""

NAIVE = """
import sys
from datetime import datetime
from redis import Redis
from rq import Queue
from schedulerd import producer

queue = Queue("default", connection=Redis.from_url(sys.argv[1]))
try:
    producer.enqueue_at(queue, datetime(2030, 1, 1, 12, 0), "tests.support.rq_jobs.record", args=("x",))
except ValueError as error:
    print(error)
    sys.exit(3)
"""


def run_in_rq_env(rq_env, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(rq_env.python), "-c", script, *args],
        check=False,
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def server_now(client) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


class TestProducer:
    def test_fractional_score_and_prompt_promotion(self, rq_env, redis_server, start_process, start_worker):
        client = redis_server.client()
        daemon = start_process(
            [SCHEDULERD, "run", "--log-format", "json", "--queues", "default",
             "--redis-url", redis_server.url, "--poll-interval", "30"],
            env={**os.environ},
        )  # fmt: skip
        wait_for(lambda: client.exists(KEYS.lease("default")), 10)
        # The leader has made its first pass and now sleeps for the 30 s poll interval.
        wait_for(lambda: '"redis_connected"' in daemon.read_log(), 10)

        produced = run_in_rq_env(rq_env, PRODUCER, redis_server.url, "0.4", "precise")
        assert produced.returncode == 0, produced.stderr
        job = json.loads(produced.stdout)
        score = client.zscore(KEYS.scheduled_set("default"), job["id"])
        assert score is not None
        assert score == job["due"]
        assert score != int(score)

        landed_at = wait_for(
            lambda: client.lpos(KEYS.queue_list("default"), job["id"]) is not None and server_now(client), 5
        )
        assert landed_at >= job["due"]

        start_worker(rq_env, redis_server.url, ["default"])
        wait_for(lambda: client.lrange("test:ran", 0, -1) == [b"precise"], 20)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0

    def test_naive_datetime_rejected(self, rq_env, redis_server):
        result = run_in_rq_env(rq_env, NAIVE, redis_server.url)
        assert result.returncode == 3
        assert "timezone-aware" in result.stdout
        assert redis_server.client().zcard(KEYS.scheduled_set("default")) == 0
