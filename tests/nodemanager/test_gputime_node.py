"""The GPU time scheduler inside the node manager: quotas from allocations, annotations and
budget states; a running pod's annotations changed; a namespace throttled and restored; the
node manager restarted under connected clients."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nodemanager.daemon import Daemon
from nodemanager.gputime.budgetstates import BudgetStateError, throttle_floor
from nodemanager.gputime.client import ClientError, GpuTimeClient, QuotaView
from nodemanager.gputime.quotas import container_quota
from nodemanager.gputime.scheduler import Quota
from nodemanager.inventory import SimulatedInventory
from nodemanager.kube import KubernetesApi

from tests.nodemanager.conftest import GIB, simulated_daemon
from tests.nodemanager.fake_apiserver import FakeApiServer, make_pod
from tests.nodemanager.fake_kubelet import FakeKubelet
from tests.polling import wait_until


@pytest.mark.parametrize(
    ("core", "soft", "annotations", "throttle", "expected"),
    [
        pytest.param(30, 30, {}, None, Quota(0.3, 0.3), id="core-share-both"),
        pytest.param(30, 30, None, None, Quota(0.3, 0.3), id="pod-unknown"),
        pytest.param(30, 70, None, None, Quota(0.3, 0.7), id="pod-unknown-allocate-burst"),
        pytest.param(
            30,
            30,
            {"gpushare.io/quota-request": "0.2", "gpushare.io/quota-limit": "0.6"},
            None,
            Quota(0.2, 0.6),
            id="request-and-limit",
        ),
        pytest.param(
            30, 30, {"gpushare.io/quota-request": "0"}, None, Quota(0, 0.3), id="best-effort"
        ),
        pytest.param(
            30,
            30,
            {"gpushare.io/quota-request": "0.5"},
            None,
            Quota(0.3, 0.3),
            id="request-above-core-not-guaranteed",
        ),
        pytest.param(
            30,
            30,
            {"tencent.com/vcuda-core-limit": "80", "gpushare.io/quota-limit": "0.5"},
            None,
            Quota(0.3, 0.5),
            id="smaller-ceiling-wins",
        ),
        pytest.param(
            30, 30, {"gpushare.io/quota-limit": "0.1"}, None, Quota(0.3, 0.3), id="cap-not-below"
        ),
        pytest.param(
            30, 30, {"gpushare.io/quota-request": " 0.2"}, None, Quota(0.3, 0.3), id="invalid"
        ),
        pytest.param(
            50,
            50,
            {"gpushare.io/quota-limit": "0.9"},
            10,
            Quota(0.05, 0.05, throttled=True),
            id="throttled-to-floor",
        ),
        pytest.param(
            50,
            50,
            {"gpushare.io/quota-request": "0"},
            20,
            Quota(0, 0.1, throttled=True),
            id="throttled-best-effort",
        ),
    ],
)
def test_container_quota(
    core: int,
    soft: int,
    annotations: dict[str, str] | None,
    throttle: float | None,
    expected: Quota,
) -> None:
    quota = container_quota(
        core_limit=core, soft_limit=soft, annotations=annotations, throttle_percent=throttle
    )
    assert quota == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param({"state": "in-budget", "whenExhausted": "throttle"}, None, id="in-budget"),
        pytest.param({"state": "exhausted", "whenExhausted": "deny"}, None, id="deny"),
        pytest.param({"state": "exhausted", "whenExhausted": "throttle"}, 10.0, id="default"),
        pytest.param(
            {"state": "exhausted", "whenExhausted": "throttle", "throttleToPercent": 25},
            25.0,
            id="floor",
        ),
    ],
)
def test_throttle_floor(status: dict[str, Any], expected: float | None) -> None:
    assert throttle_floor(status) == expected


def test_throttle_floor_out_of_range_is_an_error() -> None:
    status = {"state": "exhausted", "whenExhausted": "throttle", "throttleToPercent": 0}
    with pytest.raises(BudgetStateError, match="throttleToPercent=0"):
        throttle_floor(status)


class FakeTimekeeper:
    """Answers `GET /api/v1/namespaces/{ns}` with a status the test sets."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}
        self.down = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                if fake.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(
                    fake.states.get(name, {"state": "in-budget", "whenExhausted": "throttle"})
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def timekeeper() -> Iterator[FakeTimekeeper]:
    fake = FakeTimekeeper()
    yield fake
    fake.stop()


def _daemon(short_dir: Path, apiserver: FakeApiServer, timekeeper: FakeTimekeeper) -> Daemon:
    daemon = simulated_daemon(short_dir, apiserver)
    settings = replace(daemon.settings, timekeeper_url=timekeeper.url, budget_poll_seconds=0.1)
    return Daemon(
        settings,
        inventory=SimulatedInventory(2, 16 * GIB),
        kubernetes=KubernetesApi.for_url(apiserver.url),
    )


def _quota_is(client: GpuTimeClient, guarantee: float, cap: float, throttled: bool) -> bool:
    client.poll()
    quota: QuotaView | None = client.quota
    return quota is not None and (quota.guarantee, quota.cap, quota.throttled) == (
        guarantee,
        cap,
        throttled,
    )


def _metrics(daemon: Daemon) -> str:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as page:
        return str(page.read().decode())


def _sample(page: str, name: str, pod: str) -> float | None:
    for line in page.splitlines():
        if line.startswith(f"gpushare_container_gpu_time_{name}{{") and f'pod="{pod}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_annotations_and_budget_states_reach_a_running_container(
    short_dir: Path, apiserver: FakeApiServer, timekeeper: FakeTimekeeper
) -> None:
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    daemon = _daemon(short_dir, apiserver, timekeeper)
    daemon.start()
    client: GpuTimeClient | None = None
    try:
        wait_until(lambda: len(kubelet.health("tencent.com/vcuda-memory")) == 128, what="devices")
        pod = make_pod(
            "train",
            [("main", 30, 4)],
            annotations={"gpushare.io/quota-request": "0.2", "gpushare.io/quota-limit": "0.6"},
        )
        apiserver.add_pod(pod)
        granted = kubelet.admit(pod)["main"]
        socket_in_container = granted.envs["GPUSHARE_SCHEDULER_SOCKET"]
        assert socket_in_container == "/var/run/gpushare/gputime.sock"
        state_dir = next(
            host for inside, host, _ in granted.mounts if inside == "/var/run/gpushare"
        )
        path = Path(state_dir) / "gputime.sock"
        wait_until(path.exists, what="the container's socket")
        client = GpuTimeClient(path).connect()
        active = client
        wait_until(lambda: _quota_is(active, 0.2, 0.6, False), what="quota from annotations")

        apiserver.annotate_pod("train", {"gpushare.io/quota-limit": "0.8"})
        wait_until(lambda: _quota_is(active, 0.2, 0.8, False), what="the new quota-limit")
        page = _metrics(daemon)
        assert _sample(page, "cap_percent", "train") == 80.0
        assert _sample(page, "guarantee_percent", "train") == 20.0
        assert _sample(page, "clients", "train") == 1.0

        timekeeper.states["team-a"] = {
            "state": "exhausted",
            "whenExhausted": "throttle",
            "throttleToPercent": 10,
        }
        wait_until(lambda: _quota_is(active, 0.03, 0.03, True), what="throttled to the floor")
        assert _sample(_metrics(daemon), "throttled", "train") == 1.0
        timekeeper.down = True  # the last state stays in force
        timekeeper.states["team-a"] = {"state": "in-budget", "whenExhausted": "throttle"}
        budgets = daemon.gpu_time.budgets if daemon.gpu_time else None
        assert budgets is not None
        for _ in range(3):
            budgets.poll_once()
        assert _quota_is(active, 0.03, 0.03, True)
        timekeeper.down = False
        wait_until(lambda: _quota_is(active, 0.2, 0.8, False), what="restored after refill")
    finally:
        if client is not None:
            client.close()
        daemon.stop()
        kubelet.stop()


def test_restart_loses_no_container(
    short_dir: Path, apiserver: FakeApiServer, timekeeper: FakeTimekeeper
) -> None:
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    daemon = _daemon(short_dir, apiserver, timekeeper)
    daemon.start()
    try:
        wait_until(lambda: len(kubelet.health("tencent.com/vcuda-memory")) == 128, what="devices")
        pod = make_pod("p", [("main", 40, 4)], annotations={"gpushare.io/quota-limit": "0.7"})
        apiserver.add_pod(pod)
        granted = kubelet.admit(pod)["main"]
        state_dir = next(
            host for inside, host, _ in granted.mounts if inside == "/var/run/gpushare"
        )
        path = Path(state_dir) / "gputime.sock"
        wait_until(path.exists, what="the container's socket")
        with GpuTimeClient(path).connect() as client:
            token = client.acquire()
            client.release(token, 0.001)
    finally:
        daemon.stop()
    again = _daemon(short_dir, apiserver, timekeeper)
    again.start()
    try:
        wait_until(path.exists, what="the socket served again")

        def reconnected() -> bool:
            with GpuTimeClient(path).connect() as client:
                token = client.acquire()
                client.release(token, 0.001)
                return _quota_is(client, 0.4, 0.7, False)

        wait_until(
            reconnected, what="the container served after the restart", ignoring=(ClientError,)
        )
    finally:
        again.stop()
        kubelet.stop()


class _Allocations:
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def allocations(self) -> list[Any]:
        return self.items


class _Pods:
    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = True

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get((namespace, name)) if self.synced else None


def test_quota_kept_while_the_pod_cache_is_out_of_sync(short_dir: Path) -> None:
    from nodemanager.devices import Kind
    from nodemanager.gputime.scheduler import SchedulerConfig
    from nodemanager.gputime.server import GpuTimeServer
    from nodemanager.gputime.service import GpuTimeService
    from nodemanager.ledger import Allocation, Owner

    (short_dir / "a1").mkdir()
    allocation = Allocation(
        id="a1",
        kind=Kind.CORE,
        device_ids=("x",),
        units_by_gpu={"GPU-0": 40},
        created_at=0.0,
        owner=Owner("team-a", "p", "main", "uid-p"),
        state_dir=str(short_dir / "a1"),
        core_limit=40,
        core_soft_limit=40,
    )
    pods = _Pods()
    pods.pods[("team-a", "p")] = {
        "metadata": {"uid": "uid-p", "annotations": {"gpushare.io/quota-request": "0"}}
    }
    server = GpuTimeServer(SchedulerConfig())
    service = GpuTimeService(server, _Allocations([allocation]), pods=pods)
    try:
        service.sync()
        assert server.quota("a1") == Quota(0, 0.4)
        pods.synced = False  # the API server is away
        service.sync()
        assert server.quota("a1") == Quota(0, 0.4), "fell back to the defaults"
        pods.synced = True
        pods.pods[("team-a", "p")]["metadata"]["uid"] = "uid-other"  # a new pod, same name
        service.sync()
        assert server.quota("a1") == Quota(0, 0.4), "another pod's annotations taken"
    finally:
        server.stop()


def _parse(argv: list[str]) -> Any:
    from nodemanager.settings import parse_settings

    from gpushare import cli

    return parse_settings(cli.build_parser().parse_args(["nodemanager", "--node-name", "n", *argv]))


def test_gpu_time_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSHARE_NODEMANAGER_TIMEKEEPER_URL", "http://tk.example:8080")
    settings = _parse(["--gpu-time-window", "2", "--gpu-time-min-token", "0.02"])
    assert (settings.gpu_time, settings.gpu_time_window_seconds) == (True, 2.0)
    assert settings.gpu_time_min_token_seconds == 0.02
    assert settings.timekeeper_url == "http://tk.example:8080"
    flagged = _parse(["--no-gpu-time", "--timekeeper-url", "https://other:1"])
    assert (flagged.gpu_time, flagged.timekeeper_url) == (False, "https://other:1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--gpu-time-min-token", "0.5", "--gpu-time-max-token", "0.1"],
            "--gpu-time-max-token: must be between --gpu-time-min-token and --gpu-time-window"
            " (got min token 0.5, max token 0.1, window 1)",
            id="min-above-max",
        ),
        pytest.param(
            ["--gpu-time-window", "0.001"],
            "--gpu-time-window: must be at least 0.01 (got '0.001')",
            id="window-too-short",
        ),
        pytest.param(
            ["--timekeeper-url", "tk:8080"],
            "--timekeeper-url: must be an http:// or https:// URL (got 'tk:8080')",
            id="url-without-scheme",
        ),
        pytest.param(
            ["--budget-poll-interval", "never"],
            "--budget-poll-interval: must be a number (got 'never')",
            id="poll-not-a-number",
        ),
    ],
)
def test_bad_gpu_time_flags(argv: list[str], message: str) -> None:
    from nodemanager.settings import SettingsError

    with pytest.raises(SettingsError) as info:
        _parse(argv)
    assert message in str(info.value)


def test_without_the_scheduler_no_socket_is_handed_out(
    short_dir: Path, apiserver: FakeApiServer
) -> None:
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    base = simulated_daemon(short_dir, apiserver)
    daemon = Daemon(
        replace(base.settings, gpu_time=False),
        inventory=SimulatedInventory(2, 16 * GIB),
        kubernetes=KubernetesApi.for_url(apiserver.url),
    )
    daemon.start()
    try:
        wait_until(lambda: len(kubelet.health("tencent.com/vcuda-memory")) == 128, what="devices")
        pod = make_pod("p", [("main", 30, 4)])
        apiserver.add_pod(pod)
        granted = kubelet.admit(pod)["main"]
        assert "GPUSHARE_SCHEDULER_SOCKET" not in granted.envs
        assert daemon.gpu_time is None
    finally:
        daemon.stop()
        kubelet.stop()
