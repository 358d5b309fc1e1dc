"""Call signatures of the factory fixtures in tests/conftest.py, for annotating tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tests.support.processes import ManagedProcess
from tests.support.redis_server import ConfigValue, RedisServer
from tests.support.rqenvs import RQEnv


class RedisServerFactory(Protocol):
    def __call__(self, **config: ConfigValue) -> RedisServer: ...


class StartProcess(Protocol):
    def __call__(
        self,
        argv: Sequence[str | Path],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> ManagedProcess: ...


class StartWorker(Protocol):
    def __call__(
        self,
        rq_env: RQEnv,
        url: str,
        queues: Sequence[str],
        with_scheduler: bool = False,
        name: str | None = None,
        wait_ready: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess: ...
