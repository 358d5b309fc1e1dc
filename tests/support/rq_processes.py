"""RQ producers and `rq worker` processes run from the `.venvs/rq-*` environments."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from tests.support.processes import ManagedProcess, ProcessTracker
from tests.support.rqenvs import REPO_ROOT, RQEnv
from tests.support.waiting import wait_for

PRODUCE_TIMEOUT_S = 60.0
WORKER_READY_TIMEOUT_S = 15.0

_worker_numbers = itertools.count(1)


class ProducerError(RuntimeError):
    """The producer process failed or printed something other than a JSON list of ids."""


def child_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for RQ child processes: ours, unbuffered, with `overrides` applied.

    Inherited RQ_* variables are dropped because RQ reads them as option defaults (RQ 3.0 even
    takes its key prefix from RQ_KEY_PREFIX), and a test must not depend on the caller's shell.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("RQ_")}
    # The RQ environments must import their own packages, never the main environment's.
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


def produce(
    rq_env: RQEnv, url: str, queue: str, spec: list[dict[str, Any]], env: Mapping[str, str] | None = None
) -> list[str]:
    """Schedule the jobs described by `spec` with RQ `rq_env` and return their ids.

    See tests/support/rq_producer.py for the spec format.
    """
    argv = [
        str(rq_env.python), "-m", "tests.support.rq_producer",
        "--url", url, "--queue", queue, "--spec", json.dumps(spec),
    ]  # fmt: skip
    completed = subprocess.run(
        argv,
        check=False,
        cwd=REPO_ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=PRODUCE_TIMEOUT_S,
    )
    if completed.returncode != 0:
        raise ProducerError(
            f"producer for rq {rq_env.version} exited with code {completed.returncode}:\n{completed.stderr}"
        )
    try:
        job_ids = json.loads(completed.stdout)
    except json.JSONDecodeError as error:
        raise ProducerError(f"producer printed invalid JSON {completed.stdout!r}: {error}") from error
    if not isinstance(job_ids, list):
        raise ProducerError(f"producer printed {job_ids!r}, expected a list of job ids")
    return [str(job_id) for job_id in job_ids]


def worker_argv(
    rq_env: RQEnv, url: str, queues: Sequence[str], name: str, with_scheduler: bool = False
) -> list[str]:
    """Return the `rq worker` command line. It has no --burst, so the worker stays up when idle."""
    argv = [str(rq_env.rq), "worker", "--url", url, "--name", name, "--logging_level", "DEBUG"]
    if with_scheduler:
        argv.append("--with-scheduler")
    argv.extend(queues)
    return argv


def start_worker(
    tracker: ProcessTracker,
    rq_env: RQEnv,
    url: str,
    queues: Sequence[str],
    with_scheduler: bool = False,
    name: str | None = None,
    wait_ready: bool = True,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    """Start a real `rq worker` and, unless `wait_ready` is false, wait until it has registered.

    A registered worker has written its `rq:worker:<name>` hash, so it is about to listen on
    its queues. `env` adds variables to the worker's environment. With `with_scheduler`, RQ's
    own scheduler starts as well, which a test of schedulerd must not do unless it means to
    compete with it.
    """
    if not queues:
        raise ValueError("start_worker needs at least one queue name")
    name = name or f"w{next(_worker_numbers)}-rq{rq_env.label}-{os.getpid()}"
    process = tracker.start(
        worker_argv(rq_env, url, queues, name, with_scheduler),
        env=child_env(env),
        cwd=REPO_ROOT,
        name=f"rq-worker-{name}",
    )
    if wait_ready:
        key_prefix = (env or {}).get("RQ_KEY_PREFIX", "rq")
        _wait_registered(process, url, f"{key_prefix}:worker:{name}")
    return process


def _wait_registered(process: ManagedProcess, url: str, worker_key: str) -> None:
    client = redis.Redis.from_url(url)
    try:

        def registered() -> bool:
            if not process.is_running():
                raise RuntimeError(
                    f"{process.name} exited with code {process.returncode}:\n{process.read_log()}"
                )
            return bool(client.exists(worker_key))

        wait_for(registered, WORKER_READY_TIMEOUT_S, interval_s=0.05, description=f"{worker_key} to exist")
    finally:
        client.close()
