"""The GPU time scheduler's socket server with real clients (threads using the reference
client over unix sockets): protocol, identity by socket, shares measured as the time each
client held the token, a dying client, a restart, quota changes pushed to clients."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodemanager.gputime.client import ClientError, GpuTimeClient
from nodemanager.gputime.scheduler import Quota, SchedulerConfig
from nodemanager.gputime.server import GpuTimeServer

from tests.nodemanager.gputime_sim import expected_shares
from tests.polling import wait_until

CONFIG = SchedulerConfig()


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[GpuTimeServer]:
    running = GpuTimeServer(CONFIG).start()
    yield running
    running.stop()


def _container(server: GpuTimeServer, root: Path, name: str, quota: Quota, gpu: str = "GPU-0"):
    state = root / name
    state.mkdir(exist_ok=True)
    return server.add_container(name, gpu, state, quota)


def _raw(path: Path, lines: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        # The server may answer and hang up before reading: its answer is still there.
        with contextlib.suppress(BrokenPipeError):
            sock.sendall(lines)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        pytest.param(b"HELLO 2\n", b"ERR version this server speaks version 1\n", id="version"),
        pytest.param(b"ACQUIRE\n", b"ERR state the first line must be HELLO\n", id="no-hello"),
        pytest.param(
            b"GIVE ME ALL\n",
            b"ERR syntax expected HELLO, ACQUIRE or RELEASE (got 'GIVE ME ALL')\n",
            id="unknown-command",
        ),
        pytest.param(
            b"HELLO one\n",
            b"ERR syntax the version must be a whole number (got 'one')\n",
            id="not-a-number",
        ),
        pytest.param(
            b"X" * 300, b"ERR syntax a line may be at most 128 bytes\n", id="line-too-long"
        ),
        pytest.param(b"HELLO \xff\n", b"ERR syntax lines must be ASCII\n", id="not-ascii"),
    ],
)
def test_protocol_errors_are_answered_then_the_server_hangs_up(
    server: GpuTimeServer, root: Path, sent: bytes, expected: bytes
) -> None:
    path = _container(server, root, "a", Quota(0.5, 1))
    assert _raw(path, sent) == expected
    with GpuTimeClient(path).connect() as client:  # the server still serves
        assert client.quota is not None and client.quota.guarantee == 0.5


def test_welcome_tells_window_token_and_quota(server: GpuTimeServer, root: Path) -> None:
    path = _container(server, root, "a", Quota(0.25, 0.75))
    with GpuTimeClient(path).connect() as client:
        assert client.window_seconds == CONFIG.window_seconds
        assert client.min_token_seconds == CONFIG.min_token_seconds
        assert client.quota is not None
        assert (client.quota.guarantee, client.quota.cap, client.quota.throttled) == (
            0.25,
            0.75,
            False,
        )


def test_the_socket_is_the_identity(server: GpuTimeServer, root: Path) -> None:
    """Two containers, two sockets: each client is charged to the socket it reached."""
    path_a = _container(server, root, "a", Quota(0.5, 1))
    _container(server, root, "b", Quota(0.5, 1))
    with GpuTimeClient(path_a).connect() as client:
        token = client.acquire()
        time.sleep(0.005)  # the simulated work under the token
        client.release(token, 0.005)
        wait_until(lambda: (server.used("a") or 0) > 0, what="use charged to a")
    assert server.used("b") == 0


def _run_clients(paths: dict[str, Path], seconds: float) -> dict[str, list[tuple[float, float]]]:
    """Each client asks for tokens and uses each in full for `seconds`; the time it held
    each token (its ground truth) is returned."""
    held: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    start = threading.Barrier(len(paths))
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with GpuTimeClient(paths[name]).connect() as client:
                start.wait()
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    token = client.acquire()
                    time.sleep(token.length_seconds)  # busy on the GPU for the whole token
                    released = time.monotonic()
                    client.release(token, released - token.granted_at)
                    held[name].append((token.granted_at, released))
        except BaseException as err:  # reported by the test thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(name,)) for name in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    assert not errors, errors
    return held


def _shares(held: dict[str, list[tuple[float, float]]], start: float, end: float) -> dict:
    return {
        name: sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans) / (end - start)
        for name, spans in held.items()
    }


def test_real_clients_get_their_guarantees_under_full_contention(
    server: GpuTimeServer, root: Path
) -> None:
    quotas = {"a": Quota(0.5, 1), "b": Quota(0.3, 1), "c": Quota(0.2, 1)}
    paths = {name: _container(server, root, name, quota) for name, quota in quotas.items()}
    held = _run_clients(paths, 4.0)
    first = min(a for spans in held.values() for a, _ in spans)
    shares = _shares(held, first + 1.0, first + 4.0)
    busy = sum(shares.values())
    targets = dict(zip(quotas, expected_shares(list(quotas.values()), busy), strict=True))
    for name, value in shares.items():
        assert abs(value - targets[name]) <= 0.03, (shares, targets)


def test_idle_share_goes_to_the_busy_up_to_its_cap(server: GpuTimeServer, root: Path) -> None:
    paths = {
        "a": _container(server, root, "a", Quota(0.3, 0.6)),
        "b": _container(server, root, "b", Quota(0.7, 1)),  # never asks
    }
    held = _run_clients({"a": paths["a"]}, 3.0)
    first = held["a"][0][0]
    share = _shares(held, first + 1.0, first + 3.0)["a"]
    assert abs(share - 0.6) <= 0.03


def test_a_dying_holder_releases_its_token_at_once(root: Path) -> None:
    # long tokens and grace: "at once" is then far from when the token would have ended
    config = SchedulerConfig(
        window_seconds=10, min_token_seconds=2, max_token_seconds=2, grace_seconds=2
    )
    server = GpuTimeServer(config).start()
    try:
        path_a = _container(server, root, "a", Quota(0.5, 1))
        path_b = _container(server, root, "b", Quota(0.5, 1))
        holder = GpuTimeClient(path_a).connect()
        holder.acquire()
        with GpuTimeClient(path_b).connect() as waiter:
            got: list[float] = []
            thread = threading.Thread(target=lambda: got.append(waiter.acquire().granted_at))
            thread.start()
            wait_until(lambda: server.session_count("b") == 1, what="waiter connected")
            died = time.monotonic()
            holder.close()  # the process holding the token dies
            thread.join(timeout=10)
            assert got, "the waiter never got the token"
            # long before the dead holder's 2 s token would have ended
            assert got[0] - died < 1.0
    finally:
        server.stop()


def test_a_client_that_keeps_its_token_is_revoked(server: GpuTimeServer, root: Path) -> None:
    path = _container(server, root, "a", Quota(0.5, 1))
    with GpuTimeClient(path).connect() as client:
        token = client.acquire()

        def revoked() -> bool:
            client.poll()
            return token.sequence in client.revoked

        wait_until(revoked, timeout=5, what="REVOKE")
        assert time.monotonic() - token.granted_at >= token.length_seconds


def test_quota_changes_reach_connected_clients(server: GpuTimeServer, root: Path) -> None:
    path = _container(server, root, "a", Quota(0.5, 1))
    with GpuTimeClient(path).connect() as client:
        changed_at = time.monotonic()
        assert server.set_quota("a", Quota(0.1, 0.1, throttled=True))

        def updated() -> bool:
            client.poll()
            return client.quota is not None and client.quota.throttled

        wait_until(updated, what="QUOTA pushed")
        assert client.quota is not None
        assert (client.quota.guarantee, client.quota.cap) == (0.1, 0.1)
        assert client.quota.received_at - changed_at < CONFIG.window_seconds
    assert not server.set_quota("a", Quota(0.1, 0.1, throttled=True)), "nothing changed"


def test_removed_container_cuts_its_clients_off(server: GpuTimeServer, root: Path) -> None:
    path = _container(server, root, "a", Quota(0.5, 1))
    client = GpuTimeClient(path).connect()
    server.remove_container("a")
    with pytest.raises(ClientError):
        client.acquire()
    client.close()
    assert not path.exists()


def test_restart_serves_the_same_sockets_again(root: Path) -> None:
    first = GpuTimeServer(CONFIG).start()
    path = _container(first, root, "a", Quota(0.5, 1))
    client = GpuTimeClient(path).connect()
    client.acquire()
    first.stop()
    with pytest.raises(ClientError):
        client.acquire()
    client.close()
    second = GpuTimeServer(CONFIG).start()
    try:
        assert _container(second, root, "a", Quota(0.5, 1)) == path
        with GpuTimeClient(path).connect() as again:
            token = again.acquire()
            again.release(token, 0.001)
    finally:
        second.stop()


def test_connections_per_container_are_bounded(server: GpuTimeServer, root: Path) -> None:
    from nodemanager.gputime.server import MAX_SESSIONS_PER_CONTAINER

    path = _container(server, root, "a", Quota(0.5, 1))
    clients = [GpuTimeClient(path).connect() for _ in range(MAX_SESSIONS_PER_CONTAINER)]
    try:
        refused = _raw(path, b"")  # told on connecting, before it says anything
        assert refused == b"ERR limit at most 64 connections per container\n"
        clients.pop().close()
        wait_until(
            lambda: server.session_count("a") < MAX_SESSIONS_PER_CONTAINER, what="a slot freed"
        )
        with GpuTimeClient(path).connect() as again:
            assert again.quota is not None
    finally:
        for client in clients:
            client.close()


def test_open_to_all_never_follows_a_swapped_path(root: Path) -> None:
    """The socket's directory belongs to the container: a symlink or a file put in the
    socket's place is refused, and the file it points to keeps its mode."""
    from nodemanager.gputime.server import open_to_all

    target = root / "host-file"
    target.write_text("secret")
    target.chmod(0o600)
    link = root / "link.sock"
    link.symlink_to(target)
    with pytest.raises(OSError):
        open_to_all(link)
    plain = root / "plain.sock"
    plain.write_text("")
    with pytest.raises(OSError, match="no longer the socket"):
        open_to_all(plain)
    assert target.stat().st_mode & 0o777 == 0o600
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        made = root / "real.sock"
        sock.bind(str(made))
        made.chmod(0o600)
        open_to_all(made)
        assert made.stat().st_mode & 0o777 == 0o666
    finally:
        sock.close()
