"""Daemon mode as real detached processes: pidfile, log file, SIGHUP, SIGTERM and a second instance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.waiting import wait_for
from tests.test_cli import KEYS, SCHEDULERD, run_command, schedule, server_now
from tests.test_service_notify import NotifyListener

FAST = ("--poll-interval", "0.1", "--log-format", "json")


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited; a zombie counts as exited, since only its parent can reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state letter follows the parenthesized command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


class Daemons:
    """Starts `schedulerd run --daemon` and kills, at test end, every daemon still running."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.pids: list[int] = []

    def start(
        self, url: str, *extra: str, name: str = "schedulerd", env: dict[str, str] | None = None
    ) -> tuple[int, Path, Path]:
        pidfile = self.tmp_path / f"{name}.pid"
        log_file = self.tmp_path / f"{name}.log"
        argv = [
            SCHEDULERD, "run", "--daemon", "--pidfile", str(pidfile), "--log-file", str(log_file),
            "--redis-url", url, *FAST, *extra,
        ]  # fmt: skip
        launcher = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        _, stderr = launcher.communicate(timeout=30)
        assert launcher.returncode == 0, stderr
        # The launcher writes its own pid while locking; the daemon rewrites it after detaching.
        pid = wait_for(lambda: (pid := read_pid(pidfile)) != launcher.pid and pid, 10)
        self.pids.append(pid)
        return pid, pidfile, log_file

    def kill_all(self) -> None:
        for pid in self.pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemons(tmp_path) -> Iterator[Daemons]:
    started = Daemons(tmp_path)
    yield started
    started.kill_all()


class TestDetached:
    def test_promotes_reloads_and_stops(self, redis_server, daemons, tmp_path):
        client = redis_server.client()
        config = tmp_path / "schedulerd.toml"
        config.write_text('queues = ["default"]\n')
        pid, pidfile, log_file = daemons.start(redis_server.url, "--config", str(config))

        assert os.getsid(pid) != os.getsid(0)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert "Umask:\t0022" in Path(f"/proc/{pid}/status").read_text()
        wait_for(lambda: client.get(KEYS.lease("default")) is not None, 10)
        schedule(client, "j1", server_now(client) - 1)
        wait_for(lambda: client.llen(KEYS.queue_list("default")) == 1, 10)

        # logrotate: move the file away, then SIGHUP makes the daemon write to a new one.
        rotated = log_file.with_suffix(".log.1")
        log_file.rename(rotated)
        config.write_text('queues = ["default", "high"]\n')
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: client.get(KEYS.lease("high")) is not None, 10)
        events = [event["event"] for event in read_events(log_file)]
        assert "log_reopened" in events
        assert "reload_finished" in events
        assert "daemon_detached" in [event["event"] for event in read_events(rotated)]

        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: process_gone(pid), 10)
        assert not pidfile.exists()
        assert client.exists(KEYS.lease("default"), KEYS.lease("high")) == 0
        assert read_events(log_file)[-1]["event"] == "daemon_stopped"

    def test_second_instance_exits_2(self, redis_server, daemons):
        pid, pidfile, _ = daemons.start(redis_server.url, "--queues", "default")
        for mode in ("--daemon", "--no-daemon"):
            result = run_command(
                "run", mode, "--pidfile", str(pidfile), "--queues", "default", "--redis-url", redis_server.url
            )
            assert result.returncode == 2
            assert f"running as pid {pid}: pidfile {pidfile} is locked" in result.stderr
        assert read_pid(pidfile) == pid
        check = run_command("check", "--pidfile", str(pidfile), "--queues", "default", "--redis-url", redis_server.url)
        assert check.returncode == 0
        assert f"pidfile {pidfile} is held by running pid {pid}" in check.stdout
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: process_gone(pid), 10)

    def test_stale_pidfile_taken_over(self, redis_server, daemons, tmp_path):
        dead = subprocess.Popen(["true"])
        dead.wait()
        (tmp_path / "schedulerd.pid").write_text(f"{dead.pid}\n")

        pid, pidfile, log_file = daemons.start(redis_server.url, "--queues", "default")
        assert pid != dead.pid
        stale = [event for event in read_events(log_file) if event["event"] == "pidfile_stale"]
        assert stale[0]["stale_pid"] == dead.pid
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: process_gone(pid), 10)
        assert not pidfile.exists()


    def test_mainpid_sent_after_detaching(self, redis_server, daemons):
        directory = tempfile.mkdtemp(prefix="sd-notify-")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(os.path.join(directory, "notify.sock"))
            listener = NotifyListener(sock, os.path.join(directory, "notify.sock"))
            pid, _, _ = daemons.start(redis_server.url, "--queues", "default", env={"NOTIFY_SOCKET": listener.address})
            listener.wait_for(lambda message: "READY" in message, 10)
        shutil.rmtree(directory, ignore_errors=True)
        assert {"MAINPID": str(pid)} in listener.messages
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: process_gone(pid), 10)


class TestErrorsBeforeDetaching:
    def test_unwritable_log_directory(self, tmp_path):
        result = run_command(
            "run", "--daemon", "--pidfile", str(tmp_path / "s.pid"), "--log-file", str(tmp_path / "no" / "s.log"),
            "--queues", "default",
        )  # fmt: skip
        assert result.returncode == 2
        assert f"directory {tmp_path / 'no'} does not exist" in result.stderr
        assert not (tmp_path / "s.pid").exists()

    def test_missing_pidfile(self):
        result = run_command("run", "--daemon", "--queues", "default")
        assert result.returncode == 2
        assert "needs a pidfile" in result.stderr

    def test_busy_http_port(self, tmp_path):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = run_command(
                "run", "--daemon", "--pidfile", str(tmp_path / "s.pid"), "--log-file", str(tmp_path / "s.log"),
                "--queues", "default", "--http-address", f"127.0.0.1:{port}",
            )  # fmt: skip
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
        assert not (tmp_path / "s.pid").exists()
        assert read_events(tmp_path / "s.log")[-1]["event"] == "http_listen_failed"


class TestForegroundPidfile:
    def test_pidfile_written_and_removed(self, redis_server, start_process, tmp_path):
        client = redis_server.client()
        pidfile = tmp_path / "fg.pid"
        daemon = start_process([
            SCHEDULERD, "run", "--pidfile", str(pidfile), "--queues", "default", "--redis-url", redis_server.url,
            *FAST,
        ])  # fmt: skip
        wait_for(lambda: client.exists(KEYS.lease("default")), 10)
        assert read_pid(pidfile) == daemon.pid
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert not pidfile.exists()
