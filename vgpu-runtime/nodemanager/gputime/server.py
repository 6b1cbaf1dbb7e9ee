"""The GPU time scheduler's unix-socket server: one listening socket per container.

Each shared container gets its own socket, `gputime.sock` in its private state directory
(mounted into the container only): whoever connects to it speaks for that container, so the
socket a client reaches is its identity and no secret is exchanged. One thread serves every
socket with a selector; the decisions are `scheduler.GpuScheduler`'s, one per physical GPU.

A client that hangs up (its process died) gives back its token and its place in the queue at
once. The sockets are made again at the same paths when the node manager restarts, and the
clients reconnect; use recorded before the restart is forgotten (shares are compared over a
window of about a second, so this costs at most one window of imbalance).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodemanager.gputime import protocol
from nodemanager.gputime.scheduler import ALL_SMS, GpuScheduler, Quota, SchedulerConfig

log = logging.getLogger(__name__)

SOCKET_NAME = "gputime.sock"
"""The socket's name in a container's state directory."""
MAX_SESSIONS_PER_CONTAINER = 64
"""Connections one container may hold open at once (one per process using the GPU); more
are refused, so that no container can exhaust the node manager's file descriptors."""


class ServerError(Exception):
    """A container's socket cannot be served (e.g. its directory is not writable)."""


def open_to_all(path: Path) -> None:
    """Make the socket just bound at `path` connectable by any user (mode 0666).

    The directory is the container's own and writable by it, so the path may have been
    swapped for a symlink since the bind; a plain chmod would follow it (to any file of the
    host). The inode is pinned with O_PATH|O_NOFOLLOW, checked to be a socket, and changed
    through that descriptor only.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(f"{path} is no longer the socket just made")
        os.chmod(f"/proc/self/fd/{fd}", 0o666)
    finally:
        os.close(fd)


@dataclass
class _Container:
    allocation_id: str
    gpu: str
    path: Path
    listener: socket.socket
    connections: set[int] = field(default_factory=set)


@dataclass
class _Connection:
    sock: socket.socket
    allocation_id: str
    session: int
    buffer: bytes = b""
    greeted: bool = False


class GpuTimeServer:
    """Serves the containers' sockets and runs one scheduler per GPU. Thread-safe."""

    def __init__(
        self, config: SchedulerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._schedulers: dict[str, GpuScheduler] = {}
        self._containers: dict[str, _Container] = {}
        self._connections: dict[int, _Connection] = {}
        self._by_session_id: dict[int, _Connection] = {}
        self._selector = selectors.DefaultSelector()
        self._todo: list[Callable[[], None]] = []
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sessions = 0
        self.decision_seconds: collections.deque[float] = collections.deque(maxlen=100_000)
        """How long each decision on a free token took (the benchmark reads it)."""
        self.cpu_seconds = 0.0
        """CPU time used by the serving thread so far."""
        self.quota_changes: collections.deque[tuple[str, float]] = collections.deque(maxlen=1000)
        """(allocation ID, clock) of each quota change, for tests and the benchmark."""

    # --- containers (called by the node manager's threads) -------------------------------------
    def add_container(self, allocation_id: str, gpu: str, state_dir: Path, quota: Quota) -> Path:
        """Serve a container's socket in `state_dir` (made again if it exists); its path."""
        with self._lock:
            existing = self._containers.get(allocation_id)
            if existing is not None:
                self._set_quota(allocation_id, quota)
                return existing.path
            path = state_dir / SOCKET_NAME
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                path.unlink(missing_ok=True)
                listener.bind(str(path))
                open_to_all(path)  # the container's processes may run as any user
                listener.listen(16)
                listener.setblocking(False)
            except OSError as err:
                listener.close()
                raise ServerError(f"cannot serve {path}: {err}") from err
            scheduler = self._schedulers.get(gpu)
            if scheduler is None:
                scheduler = self._schedulers[gpu] = GpuScheduler(self.config)
            scheduler.set_account(allocation_id, quota)
            self._containers[allocation_id] = _Container(allocation_id, gpu, path, listener)
            self._later(lambda: self._register(listener, allocation_id))
            self.quota_changes.append((allocation_id, self._clock()))
            return path

    def set_quota(self, allocation_id: str, quota: Quota) -> bool:
        """Change a container's share; its clients are told at once. True when it changed."""
        with self._lock:
            return self._set_quota(allocation_id, quota)

    def _set_quota(self, allocation_id: str, quota: Quota) -> bool:
        container = self._containers.get(allocation_id)
        if container is None:
            return False
        if not self._schedulers[container.gpu].set_account(allocation_id, quota):
            return False
        self.quota_changes.append((allocation_id, self._clock()))
        message = protocol.quota(quota.guarantee, quota.cap, quota.throttled)
        for fd in list(container.connections):
            connection = self._connections.get(fd)
            if connection is not None and connection.greeted:
                self._send(connection, message)
        self._wake()
        return True

    def remove_container(self, allocation_id: str) -> None:
        """Stop serving a container (its allocation was released): its clients are cut off."""
        with self._lock:
            container = self._containers.pop(allocation_id, None)
            if container is None:
                return
            for fd in list(container.connections):
                connection = self._connections.get(fd)
                if connection is not None:
                    self._drop(connection)
            self._schedulers[container.gpu].remove_account(allocation_id, self._clock())
            listener = container.listener
            self._later(lambda: self._close_listener(listener))
            container.path.unlink(missing_ok=True)

    def quota(self, allocation_id: str) -> Quota | None:
        with self._lock:
            container = self._containers.get(allocation_id)
            if container is None:
                return None
            return self._schedulers[container.gpu].quota(allocation_id)

    def containers(self) -> dict[str, tuple[str, Quota]]:
        """Allocation ID -> (GPU, quota) of every container served."""
        with self._lock:
            result = {}
            for name, container in self._containers.items():
                quota = self._schedulers[container.gpu].quota(name)
                if quota is not None:
                    result[name] = (container.gpu, quota)
            return result

    def used(self, allocation_id: str) -> float | None:
        """The container's share of its GPU over the last window (0..1)."""
        with self._lock:
            container = self._containers.get(allocation_id)
            if container is None:
                return None
            return self._schedulers[container.gpu].used(allocation_id, self._clock())

    def session_count(self, allocation_id: str) -> int:
        with self._lock:
            container = self._containers.get(allocation_id)
            return 0 if container is None else len(container.connections)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> GpuTimeServer:
        self._thread = threading.Thread(target=self._run, name="gputime", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for connection in list(self._connections.values()):
                self._drop(connection)
            for container in self._containers.values():
                container.listener.close()
            self._containers.clear()
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    # --- the serving thread --------------------------------------------------------------------
    def _later(self, action: Callable[[], None]) -> None:
        self._todo.append(action)
        self._wake()

    def _wake(self) -> None:
        # failing means a wake-up is pending already (or the server is stopping)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_write.send(b"x")

    def _register(self, listener: socket.socket, allocation_id: str) -> None:
        self._selector.register(listener, selectors.EVENT_READ, allocation_id)

    def _close_listener(self, listener: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(listener)
        listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve_once()
            except Exception:  # one bad event must not stop the scheduling of every GPU
                log.exception("GPU time server: unexpected error; serving on")
                self._stop.wait(0.01)  # never a tight loop of the same error
            self.cpu_seconds = time.thread_time()

    def _serve_once(self) -> None:
        with self._lock:
            timeout = self._timeout()
        ready = self._selector.select(timeout)
        with self._lock:
            todo, self._todo = self._todo, []
            for action in todo:
                action()
            for key, _ in ready:
                if key.fileobj is self._wake_read:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while self._wake_read.recv(4096):
                            pass
                elif isinstance(key.data, str):
                    self._accept(key.data)
                else:
                    connection = self._connections.get(key.fd)
                    if connection is not None:
                        self._read(connection)
            self._schedule()

    def _timeout(self) -> float | None:
        now = self._clock()
        times = [
            when
            for scheduler in self._schedulers.values()
            if (when := scheduler.next_event(now)) is not None
        ]
        return None if not times else max(0.0, min(times) - now)

    def _schedule(self) -> None:
        now = self._clock()
        for scheduler in self._schedulers.values():
            while (revoked := scheduler.revoke_expired(now)) is not None:
                connection = self._by_session(revoked.session)
                if connection is not None:
                    log.info(
                        "token %d of allocation %s revoked: kept %.3f s past its end",
                        revoked.sequence,
                        revoked.account,
                        now - revoked.end,
                    )
                    self._send(connection, protocol.revoke(revoked.sequence))
            # several tokens at once only while the holders' SM partitions fit together
            while scheduler.partitions_held < ALL_SMS:
                started = time.perf_counter()
                grant = scheduler.decide(now)
                self.decision_seconds.append(time.perf_counter() - started)
                if grant is None:
                    break
                connection = self._by_session(grant.session)
                if connection is not None:
                    self._send(connection, protocol.grant(grant.sequence, grant.length_seconds))

    def _by_session(self, session: int) -> _Connection | None:
        return self._by_session_id.get(session)

    def _accept(self, allocation_id: str) -> None:
        container = self._containers.get(allocation_id)
        if container is None:
            return
        try:
            sock, _ = container.listener.accept()
        except (BlockingIOError, OSError):
            return
        if len(container.connections) >= MAX_SESSIONS_PER_CONTAINER:
            with contextlib.suppress(OSError):
                sock.send(
                    protocol.error(
                        "limit", f"at most {MAX_SESSIONS_PER_CONTAINER} connections per container"
                    )
                )
            sock.close()
            return
        sock.setblocking(False)
        self._sessions += 1
        connection = _Connection(sock, allocation_id, self._sessions)
        self._connections[sock.fileno()] = connection
        self._by_session_id[connection.session] = connection
        container.connections.add(sock.fileno())
        self._selector.register(sock, selectors.EVENT_READ, 0)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        connection.buffer += data
        while b"\n" in connection.buffer:
            line, connection.buffer = connection.buffer.split(b"\n", 1)
            try:
                self._handle(connection, protocol.parse_command(line))
            except protocol.ProtocolError as err:
                self._refuse(connection, err)
                return
            if connection.sock.fileno() < 0:
                return
        if len(connection.buffer) > protocol.MAX_LINE_BYTES:
            self._refuse(
                connection,
                protocol.ProtocolError(
                    "syntax", f"a line may be at most {protocol.MAX_LINE_BYTES} bytes"
                ),
            )

    def _handle(self, connection: _Connection, command: protocol.Command) -> None:
        container = self._containers[connection.allocation_id]
        scheduler = self._schedulers[container.gpu]
        if isinstance(command, protocol.Hello):
            if connection.greeted:
                raise protocol.ProtocolError("state", "HELLO was sent already")
            if command.version != protocol.VERSION:
                raise protocol.ProtocolError(
                    "version", f"this server speaks version {protocol.VERSION}"
                )
            connection.greeted = True
            scheduler.open_session(connection.session, connection.allocation_id)
            quota = scheduler.quota(connection.allocation_id)
            assert quota is not None
            self._send(
                connection,
                protocol.welcome(self.config.window_seconds, self.config.min_token_seconds)
                + protocol.quota(quota.guarantee, quota.cap, quota.throttled),
            )
            return
        if not connection.greeted:
            raise protocol.ProtocolError("state", "the first line must be HELLO")
        if isinstance(command, protocol.Acquire):
            scheduler.request(connection.session)
        else:
            scheduler.release(
                connection.session, command.sequence, command.used_us / 1e6, self._clock()
            )

    def _refuse(self, connection: _Connection, err: protocol.ProtocolError) -> None:
        log.info("client of allocation %s refused: %s", connection.allocation_id, err)
        self._send(connection, protocol.error(err.code, err.text))
        self._drop(connection)

    def _send(self, connection: _Connection, data: bytes) -> None:
        try:
            connection.sock.send(data)
        except OSError:
            self._drop(connection)  # a client that does not read its messages is gone

    def _drop(self, connection: _Connection) -> None:
        fd = connection.sock.fileno()
        if fd < 0:
            return
        self._connections.pop(fd, None)
        self._by_session_id.pop(connection.session, None)
        container = self._containers.get(connection.allocation_id)
        if container is not None:
            container.connections.discard(fd)
            self._schedulers[container.gpu].close_session(connection.session, self._clock())
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()
        self._wake()
