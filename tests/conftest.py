"""Fixtures that start real redis-server and RQ processes for each test and stop them after it.

Fixture API:

- `redis_server` -> RedisServer: a fresh server on 127.0.0.1:<free port> and a unix socket,
  with `--save '' --appendonly no`.
- `redis_server_factory(**config)` -> RedisServer: the same with extra redis.conf settings, such
  as `appendonly="yes"`; underscores in keys become hyphens.
- `rq_env` -> RQEnv: parametrized over RQ_VERSIONS with ids "rq1.16", "rq2.12", "rq3.0".
- `start_process(argv, env=None, log_path=None, cwd=None, name=None)` -> ManagedProcess.
- `start_worker(rq_env, url, queues, with_scheduler=False, name=None, wait_ready=True, env=None)`
  -> ManagedProcess: a real `rq worker` without --burst.

Every process is stopped at test end (SIGTERM, then SIGKILL to its process group after a
timeout), workers before Redis servers. When a test fails, the report shows each process's log.
Plain helpers live in tests.support: `produce` in rq_processes, `wait_for` in waiting.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import rqenvs
from tests.support.fixture_types import RedisServerFactory, StartProcess, StartWorker
from tests.support.processes import ManagedProcess, ProcessTracker
from tests.support.redis_server import (
    ConfigValue,
    RedisServer,
    RedisServerError,
    find_redis_server,
    redis_server_version,
)
from tests.support.rq_processes import start_worker as start_rq_worker
from tests.support.rqenvs import RQ_VERSIONS, RQEnv

__all__ = ["RQ_VERSIONS"]

_TRACKER_KEY = pytest.StashKey[ProcessTracker]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        binary = find_redis_server()
        redis_line = f"redis-server: {binary} (version {redis_server_version(binary)})"
    except RedisServerError as error:
        redis_line = f"redis-server: unavailable: {error}"
    rq_line = "rq environments: " + ", ".join(
        f"{' '.join(rqenvs.RQ_REQUIREMENTS[label])} ({'built' if rqenvs.is_current(label) else 'not built'})"
        for label in RQ_VERSIONS
    )
    return [redis_line, rq_line]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    tracker = item.stash.get(_TRACKER_KEY, None)
    # Logs are read while the processes still run, because teardown has not started yet for
    # the setup and call phases.
    if report.failed and tracker is not None:
        for title, text in tracker.log_sections():
            report.sections.append((f"process log: {title}", text))
    return report


@pytest.fixture
def process_tracker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessTracker]:
    tracker = ProcessTracker(tmp_path / "logs")
    request.node.stash[_TRACKER_KEY] = tracker
    yield tracker
    tracker.stop_all()


@pytest.fixture
def start_process(process_tracker: ProcessTracker) -> StartProcess:
    def start(
        argv: Sequence[str | Path],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> ManagedProcess:
        return process_tracker.start(argv, env=env, log_path=log_path, cwd=cwd, name=name)

    return start


@pytest.fixture
def redis_server_factory(process_tracker: ProcessTracker, tmp_path: Path) -> Iterator[RedisServerFactory]:
    binary = find_redis_server()
    servers: list[RedisServer] = []

    def create(**config: ConfigValue) -> RedisServer:
        server = RedisServer(process_tracker, binary, tmp_path / f"redis-{len(servers)}", dict(config))
        servers.append(server)
        server.start()
        return server

    yield create

    for server in servers:
        server.close_clients()
    # Stops workers and daemons first, while they can still reach Redis, then the servers.
    process_tracker.stop_all()
    for server in servers:
        server.cleanup()


@pytest.fixture
def redis_server(redis_server_factory: RedisServerFactory) -> RedisServer:
    return redis_server_factory()


@pytest.fixture(params=RQ_VERSIONS, ids=[f"rq{label}" for label in RQ_VERSIONS])
def rq_env(request: pytest.FixtureRequest) -> RQEnv:
    return rqenvs.rq_env(request.param)


@pytest.fixture
def start_worker(process_tracker: ProcessTracker) -> StartWorker:
    def start(
        rq_env: RQEnv,
        url: str,
        queues: Sequence[str],
        with_scheduler: bool = False,
        name: str | None = None,
        wait_ready: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        return start_rq_worker(
            process_tracker, rq_env, url, queues,
            with_scheduler=with_scheduler, name=name, wait_ready=wait_ready, env=env,
        )  # fmt: skip

    return start
