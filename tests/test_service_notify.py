"""sd_notify: a real `schedulerd run` process sending to a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from schedulerd.notify import Notifier, watchdog_interval_s
from tests.support.waiting import wait_for
from tests.test_cli import KEYS, event_names, schedule, server_now, start_daemon

# WATCHDOG_USEC of 0.6 s makes schedulerd ping every 0.3 s; the loop iterates every 0.1 s.
WATCHDOG_USEC = 600_000
FAST = ("--poll-interval", "0.1")


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket; keeps every message received."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.socket = sock
        self.address = address
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout_s: float) -> list[dict[str, str]]:
        """Read every datagram that arrives within ``timeout_s``; return the new ones, parsed."""
        deadline = time.monotonic() + timeout_s
        new = []
        while (remaining_s := deadline - time.monotonic()) > 0:
            self.socket.settimeout(remaining_s)
            try:
                payload = self.socket.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in payload.decode().splitlines())
            new.append(message)
        self.messages.extend(new)
        return new

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout_s: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.receive(0.05):
                if predicate(message):
                    return message
        raise AssertionError(f"no matching notify message within {timeout_s} s; got {self.messages}")


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    # sun_path is 108 bytes, and pytest's tmp_path can be longer, so use a short directory.
    directory = tempfile.mkdtemp(prefix="sd-notify-")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield NotifyListener(sock, path)
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


class TestNotifyProcess:
    def test_ready_status_watchdog_and_stopping(self, redis_server, start_process, notify_socket):
        client = redis_server.client()
        env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        daemon = start_daemon(start_process, redis_server.url, "--queues", "a,b", *FAST, env=env)

        ready = notify_socket.wait_for(lambda message: "READY" in message, 10)
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "leading 2 of 2 queues; 0 jobs promoted"

        schedule(client, "j1", server_now(client) - 1, queue="a")
        status = notify_socket.wait_for(lambda m: m.get("STATUS", "").endswith("1 jobs promoted"), 10)
        assert status["STATUS"] == "leading 2 of 2 queues; 1 jobs promoted"

        notify_socket.receive(1.0)
        pings = [message for message in notify_socket.messages if message.get("WATCHDOG") == "1"]
        assert len(pings) >= 3

        daemon.send_signal(signal.SIGTERM)
        stopping = notify_socket.wait_for(lambda message: "STOPPING" in message, 10)
        assert stopping["STOPPING"] == "1"
        assert daemon.wait(10) == 0

    def test_watchdog_pauses_during_redis_outage(self, redis_server, start_process, notify_socket):
        env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        daemon = start_daemon(start_process, redis_server.url, "--queues", "a", *FAST, env=env)
        notify_socket.wait_for(lambda message: message.get("WATCHDOG") == "1", 10)

        redis_server.stop()
        outage = notify_socket.wait_for(lambda m: m.get("STATUS", "").startswith("Redis unavailable"), 10)
        assert "WATCHDOG" not in outage
        # Longer than two ping intervals: a healthy loop would have pinged at least twice.
        during_outage = notify_socket.receive(1.0)
        assert [message for message in during_outage if "WATCHDOG" in message] == []

        redis_server.restart()
        recovered = notify_socket.wait_for(lambda message: message.get("WATCHDOG") == "1", 10)
        assert recovered["STATUS"].startswith("leading")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0

    def test_abstract_socket_and_no_watchdog(self, redis_server, start_process):
        name = f"schedulerd-test-{secrets.token_hex(8)}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            listener = NotifyListener(sock, "@" + name)
            daemon = start_daemon(
                start_process, redis_server.url, "--queues", "a", *FAST, env={"NOTIFY_SOCKET": listener.address}
            )
            listener.wait_for(lambda message: message.get("READY") == "1", 10)
            listener.receive(0.5)
            daemon.send_signal(signal.SIGTERM)
            listener.wait_for(lambda message: message.get("STOPPING") == "1", 10)
        assert daemon.wait(10) == 0
        assert [message for message in listener.messages if "WATCHDOG" in message] == []
        assert "systemd_notify_enabled" in event_names(daemon)

    def test_missing_socket_is_logged_once(self, redis_server, start_process, tmp_path):
        client = redis_server.client()
        daemon = start_daemon(
            start_process, redis_server.url, "--queues", "a", *FAST,
            env={"NOTIFY_SOCKET": str(tmp_path / "absent.sock"), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        )  # fmt: skip
        wait_for(lambda: client.exists(KEYS.lease("a")), 10)
        time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert event_names(daemon).count("notify_failed") == 1


class TestNotifier:
    def test_environment_variable_removed(self):
        environ = {"NOTIFY_SOCKET": "@name"}
        notifier = Notifier.from_environment(environ)
        assert notifier is not None
        assert "NOTIFY_SOCKET" not in environ
        notifier.close()

    def test_vsock_address_unsupported(self):
        assert Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}) is None

    def test_watchdog_interval_is_half(self):
        assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0

    def test_watchdog_of_another_pid_ignored(self):
        environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
        assert watchdog_interval_s(environ) is None

    def test_watchdog_of_own_pid(self):
        environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
        assert watchdog_interval_s(environ) == 15.0

