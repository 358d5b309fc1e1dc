"""A TCP proxy on 127.0.0.1 in front of one Redis server, which a test can make drop, stall or reject.

    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        url = proxy.url()           # point the daemon here instead of at the server
        proxy.drop_all()            # reset every open connection now
        proxy.stall()               # stop forwarding both ways, and data waits in the buffers
        proxy.stall(replies_only=True)  # requests still reach the server, replies wait
        proxy.resume()              # forward again, including everything that waited
        proxy.reject_new(True)      # accept and reset every new connection

Each accepted connection gets one upstream connection and two forwarding threads. While a
direction is stalled its thread does not read, so the bytes stay in the kernel buffers, as
on a network that stops delivering without closing anything. A client that gives up and
closes its socket during a stall still has its last request delivered after `resume()`,
because the proxy reads everything before the end of the stream.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only mypy reads it: the annotations are strings at run time (PEP 563).
    from typing_extensions import Self


# How long a blocked wait lasts before a forwarding thread checks for a stall, drop or close.
POLL_S = 0.02
CHUNK_BYTES = 65536


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset, as a crashed peer or a dropped NAT entry would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._directions_open = 2

    def finish_direction(self) -> None:
        """Record that one direction reached the end of its stream, and close both sockets after the second."""
        with self._lock:
            self._directions_open -= 1
            if self._directions_open > 0 or self.closed.is_set():
                return
            self.closed.set()
            self.client.close()
            self.upstream.close()

    def reset(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
            _reset(self.client)
            _reset(self.upstream)


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``upstream``, on a port the OS picks at creation."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._forward_requests = threading.Event()
        self._forward_replies = threading.Event()
        self._forward_requests.set()
        self._forward_replies.set()
        self._reject_new = threading.Event()
        self._closing = threading.Event()
        self._pairs: list[_Pair] = []
        self._pairs_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        """Connections accepted so far, rejected ones included."""

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> Self:
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    def close(self) -> None:
        """Stop accepting, reset every connection and wait for the threads."""
        self._closing.set()
        self.resume()
        self.drop_all()
        for thread in list(self._threads):
            thread.join(timeout=2.0)
        self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # Faults

    def drop_all(self) -> int:
        """Reset every open connection now, on both sides, and return how many were open."""
        with self._pairs_lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.reset()
        return len(pairs)

    def stall(self, replies_only: bool = False) -> None:
        """Stop forwarding replies, and requests too unless ``replies_only``. Connections stay open."""
        self._forward_replies.clear()
        if not replies_only:
            self._forward_requests.clear()

    def resume(self) -> None:
        """Forward again in both directions, starting with the bytes that waited."""
        self._forward_requests.set()
        self._forward_replies.set()

    def reject_new(self, reject: bool) -> None:
        """While ``reject`` is true, reset each new connection as soon as it is accepted."""
        if reject:
            self._reject_new.set()
        else:
            self._reject_new.clear()

    @property
    def open_connections(self) -> int:
        with self._pairs_lock:
            return sum(1 for pair in self._pairs if not pair.closed.is_set())

    # Threads

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            readable, _, _ = select.select([self._listener], [], [], POLL_S)
            if not readable:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            self.accepted += 1
            if self._reject_new.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5.0)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._pairs_lock:
                self._pairs.append(pair)
            self._spawn(self._forward, "proxy-requests", pair, client, upstream, self._forward_requests)
            self._spawn(self._forward, "proxy-replies", pair, upstream, client, self._forward_replies)

    def _forward(
        self, pair: _Pair, source: socket.socket, target: socket.socket, enabled: threading.Event
    ) -> None:
        try:
            while not pair.closed.is_set():
                if not enabled.wait(POLL_S):
                    continue
                readable, _, _ = select.select([source], [], [], POLL_S)
                if not readable:
                    continue
                if not enabled.is_set():
                    # A stall began during the select, so leave the bytes where they are.
                    continue
                data = source.recv(CHUNK_BYTES)
                if not data:
                    # The sender closed. Pass the end of stream on, so the other side reads it
                    # after every byte that came before it.
                    target.shutdown(socket.SHUT_WR)
                    pair.finish_direction()
                    return
                target.sendall(data)
        except (OSError, ValueError):
            # drop_all() or a peer reset the pair, and the other thread gets the same error.
            pair.reset()
