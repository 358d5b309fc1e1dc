"""Run RQ's command line and the rq_inspect and rq_promote_once scripts of one RQ environment.

These run under the main virtual environment and start the RQ environment's interpreter, so a
test reads job state exactly as that RQ release does.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from tests.support.rq_processes import child_env
from tests.support.rqenvs import REPO_ROOT, RQEnv

RQ_COMMAND_TIMEOUT_S = 60.0


class RQToolError(RuntimeError):
    """An RQ helper script exited with an error or printed something other than JSON."""


def _run_module(rq_env: RQEnv, module: str, *args: str, env: Mapping[str, str] | None = None) -> Any:
    completed = subprocess.run(
        [str(rq_env.python), "-m", module, *args],
        check=False,
        cwd=REPO_ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=RQ_COMMAND_TIMEOUT_S,
    )
    if completed.returncode != 0:
        raise RQToolError(
            f"{module} under rq {rq_env.version} exited with code {completed.returncode}:\n{completed.stderr}"
        )
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError as error:
        raise RQToolError(f"{module} printed invalid JSON {completed.stdout!r}: {error}") from error


# `env` adds variables to the RQ process's environment, such as RQ_KEY_PREFIX for RQ 3.0.


def job_statuses(
    rq_env: RQEnv, url: str, job_ids: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, str | None]:
    """Return `Job.fetch(id).get_status()` for each id, None for a job RQ cannot find."""
    result: dict[str, str | None] = _run_module(
        rq_env,
        "tests.support.rq_inspect",
        "statuses",
        "--url",
        url,
        "--ids",
        json.dumps(list(job_ids)),
        env=env,
    )
    return result


def scheduler_pids(
    rq_env: RQEnv, url: str, queues: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, int | None]:
    """Return `Queue.scheduler_pid` for each queue, as that RQ release computes it."""
    result: dict[str, int | None] = _run_module(
        rq_env,
        "tests.support.rq_inspect",
        "scheduler-pids",
        "--url",
        url,
        "--queues",
        ",".join(queues),
        env=env,
    )
    return result


def promote_once_with_rq(
    rq_env: RQEnv, url: str, queues: Sequence[str], env: Mapping[str, str] | None = None
) -> list[str]:
    """Run one pass of RQ's own scheduler over `queues`; return the queues whose lock it got."""
    result: list[str] = _run_module(
        rq_env, "tests.support.rq_promote_once", "--url", url, "--queues", ",".join(queues), env=env
    )
    return result


def rq_info(rq_env: RQEnv, url: str) -> subprocess.CompletedProcess[str]:
    """Run `rq info --url URL` once and return the finished process, whatever its exit code."""
    return subprocess.run(
        [str(rq_env.rq), "info", "--url", url],
        check=False,
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=RQ_COMMAND_TIMEOUT_S,
    )
