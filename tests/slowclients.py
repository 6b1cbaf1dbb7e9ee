"""Slow and idle clients: many sockets that open a connection and never finish a request.

Used to prove that a server keeps answering others while they are open, and that it closes
them by its deadlines. Loopback only; every socket is closed when the context ends.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PARTIAL_HEAD = b"POST /mutate HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nX-Slow: "
"""A request line and headers with the blank line that ends them still missing."""
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
"""The start of a TLS ClientHello record announcing 512 bytes, of which these are the first."""

KINDS = ("idle", "partial-head", "partial-handshake", "partial-head-tls")


@dataclass
class Latencies:
    """Seconds each request took (`inf` when it failed or timed out)."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)

    def __str__(self) -> str:
        shown = ", ".join(f"{value * 1000:.1f}" for value in sorted(self.seconds))
        return f"median {self.median * 1000:.1f} ms, worst {self.worst * 1000:.1f} ms [{shown}]"


def measure(request: Callable[[], object], count: int) -> Latencies:
    """Time `count` calls of `request` one after another; a failed call counts as `inf`."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        try:
            request()
        except (OSError, ssl.SSLError, http.client.HTTPException):
            seconds.append(float("inf"))
        else:
            seconds.append(time.perf_counter() - started)
    return Latencies(seconds)


def _open(port: int, kind: str, context: ssl.SSLContext | None) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if kind == "partial-head":
        raw.sendall(PARTIAL_HEAD)
    elif kind == "partial-handshake":
        raw.sendall(PARTIAL_CLIENT_HELLO)
    elif kind == "partial-head-tls":
        assert context is not None, "partial-head-tls needs the server's CA"
        wrapped = context.wrap_socket(raw, server_hostname="localhost")
        wrapped.sendall(PARTIAL_HEAD)
        return wrapped
    return raw


@contextmanager
def slow_sockets(
    port: int, kinds: dict[str, int], context: ssl.SSLContext | None = None
) -> Iterator[list[socket.socket]]:
    """Open `kinds[kind]` sockets of each kind to 127.0.0.1:`port` and keep them open."""
    sockets: list[socket.socket] = []
    try:
        for kind, count in kinds.items():
            assert kind in KINDS, kind
            sockets.extend(_open(port, kind, context) for _ in range(count))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server has closed (EOF or reset), without blocking."""
    closed = 0
    for sock in sockets:
        if sock.fileno() < 0:
            closed += 1
            continue
        sock.setblocking(False)
        try:
            data = sock.recv(1024)
        except (BlockingIOError, ssl.SSLWantReadError):
            continue
        except (ssl.SSLError, ConnectionError):
            closed += 1
            sock.close()
            continue
        if data == b"" or data.startswith(b"HTTP/"):  # gone, or answered with an error
            closed += 1
            sock.close()
    return closed
