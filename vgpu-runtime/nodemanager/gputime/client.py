"""A reference client of the GPU time scheduler (protocol version 1), in Python.

The hook speaks the same protocol from C; this client is what the tests and the benchmark
use, and shows the protocol's use: greet, ask for a token, use the GPU while holding it,
return it with the time really used (early when there is nothing more to do).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from nodemanager.gputime import protocol


class ClientError(Exception):
    """The server refused the client or hung up."""


@dataclass(frozen=True)
class Token:
    sequence: int
    length_seconds: float
    granted_at: float
    """time.monotonic() when the GRANT was read."""


@dataclass(frozen=True)
class QuotaView:
    guarantee: float
    cap: float
    throttled: bool
    received_at: float


class GpuTimeClient:
    """One session with the scheduler (not thread-safe)."""

    def __init__(self, path: Path | str, *, timeout_seconds: float = 10.0) -> None:
        self.path = str(path)
        self.timeout_seconds = timeout_seconds
        self.window_seconds = 0.0
        self.min_token_seconds = 0.0
        self.quota: QuotaView | None = None
        self.revoked: list[int] = []
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self, version: int = protocol.VERSION) -> GpuTimeClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_seconds)
        try:
            sock.connect(self.path)
        except OSError as err:
            sock.close()
            raise ClientError(f"cannot connect to {self.path}: {err}") from err
        self._sock = sock
        self._buffer = b""
        self._send(f"HELLO {version}\n")
        fields = self._read_until("WELCOME")
        self.window_seconds = int(fields[2]) / 1e6
        self.min_token_seconds = int(fields[3]) / 1e6
        self._read_until("QUOTA")
        return self

    def acquire(self) -> Token:
        """Ask for the token and wait until it is granted."""
        self._send("ACQUIRE\n")
        fields = self._read_until("GRANT")
        return Token(int(fields[1]), int(fields[2]) / 1e6, time.monotonic())

    def release(self, token: Token, used_seconds: float) -> None:
        self._send(f"RELEASE {token.sequence} {protocol.microseconds(used_seconds)}\n")

    def poll(self) -> None:
        """Read whatever the server sent meanwhile (quota changes, revocations)."""
        sock = self._require()
        sock.setblocking(False)
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    raise ClientError("the scheduler hung up")
                self._buffer += data
        except BlockingIOError:
            pass
        finally:
            sock.settimeout(self.timeout_seconds)
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._note(line.decode("ascii").split(" "))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> GpuTimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- lines ---------------------------------------------------------------------------------
    def _require(self) -> socket.socket:
        if self._sock is None:
            raise ClientError("not connected")
        return self._sock

    def _send(self, text: str) -> None:
        try:
            self._require().sendall(text.encode("ascii"))
        except OSError as err:
            raise ClientError(f"the scheduler hung up: {err}") from err

    def _read_until(self, kind: str) -> list[str]:
        sock = self._require()
        while True:
            while b"\n" not in self._buffer:
                try:
                    data = sock.recv(4096)
                except OSError as err:
                    raise ClientError(f"no answer from the scheduler: {err}") from err
                if not data:
                    raise ClientError("the scheduler hung up")
                self._buffer += data
            line, self._buffer = self._buffer.split(b"\n", 1)
            fields = line.decode("ascii").split(" ")
            if fields[0] == kind:
                self._note(fields)
                return fields
            self._note(fields)

    def _note(self, fields: list[str]) -> None:
        if fields[0] == "QUOTA":
            self.quota = QuotaView(
                int(fields[1]) / protocol.BASIS_POINTS,
                int(fields[2]) / protocol.BASIS_POINTS,
                fields[3] == "1",
                time.monotonic(),
            )
        elif fields[0] == "REVOKE":
            self.revoked.append(int(fields[1]))
        elif fields[0] == "ERR":
            raise ClientError(" ".join(fields[1:]))
