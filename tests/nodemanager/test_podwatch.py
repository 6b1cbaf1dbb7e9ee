"""The pod cache: a list-then-watch of the node's pods through the real `kubernetes` client
against the fake API server, and Allocate answered from it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from nodemanager.kube import KubernetesApi
from nodemanager.podwatch import PodWatch

from tests.nodemanager.conftest import NODE, NodeFactory, simulated_daemon
from tests.nodemanager.fake_apiserver import FakeApiServer, make_pod
from tests.nodemanager.fake_kubelet import MEMORY, FakeKubelet
from tests.polling import wait_until

LIMIT = "tencent.com/vcuda-core-limit"
MIB256 = 256 << 20


@pytest.fixture
def watch(apiserver: FakeApiServer) -> Iterator[PodWatch]:
    cache = PodWatch(
        KubernetesApi.for_url(apiserver.url), NODE, retry_seconds=0.05, max_retry_seconds=0.2
    )
    yield cache
    cache.stop()


def in_sync(watch: PodWatch, apiserver: FakeApiServer) -> None:
    wait_until(
        lambda: watch.synced and watch.resource_version == apiserver.resource_version,
        what="pod cache in sync",
    )


def pending(watch: PodWatch) -> list[tuple[str, str]]:
    found = watch.pending_containers()
    assert found is not None
    return [(item.pod, item.container) for item in found]


def test_pods_appear_change_and_disappear(apiserver: FakeApiServer, watch: PodWatch) -> None:
    apiserver.add_pod(make_pod("a", [("c", 30, 4)], created="2026-01-01T00:00:01Z"))
    apiserver.add_pod(make_pod("elsewhere", [("c", 30, 4)], node="node-b"))
    assert watch.pending_containers() is None  # not listed yet: callers ask the API server
    watch.start()
    in_sync(watch, apiserver)
    assert pending(watch) == [("a", "c")]
    apiserver.add_pod(make_pod("b", [("c", 10, 1)], created="2026-01-01T00:00:00Z"))
    apiserver.add_pod(make_pod("cpu-only", [("c", 0, 0)]))
    in_sync(watch, apiserver)
    assert sorted(pending(watch)) == [("a", "c"), ("b", "c")]
    apiserver.set_phase("b", "Running")
    in_sync(watch, apiserver)
    assert pending(watch) == [("a", "c")]
    assert ("team-a", "b") in watch.pod_names()  # running pods stay in the cache
    apiserver.delete_pod("b")
    apiserver.delete_pod("a")
    in_sync(watch, apiserver)
    assert pending(watch) == []
    assert watch.pod_names() == {("team-a", "cpu-only")}
    assert watch.relists == 1


def test_watch_ended_by_the_server_resumes_without_listing(
    apiserver: FakeApiServer, watch: PodWatch
) -> None:
    watch.start()
    in_sync(watch, apiserver)
    apiserver.watch_gate.clear()  # the reconnect waits, so the change happens while away
    apiserver.close_watches()
    apiserver.add_pod(make_pod("a", [("c", 30, 4)]))
    assert watch.synced  # a watch the server ended is resumed from its version
    apiserver.watch_gate.set()
    in_sync(watch, apiserver)
    assert pending(watch) == [("a", "c")]
    assert watch.relists == 1


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("open-watch", id="410-on-the-open-watch"),
        pytest.param("reconnect", id="410-when-resuming-from-a-compacted-version"),
    ],
)
def test_gone_makes_the_cache_list_again(
    apiserver: FakeApiServer, watch: PodWatch, how: str
) -> None:
    apiserver.add_pod(make_pod("old", [("c", 30, 4)]))
    watch.start()
    in_sync(watch, apiserver)
    if how == "open-watch":
        apiserver.add_pod(make_pod("new", [("c", 20, 2)]))
        apiserver.delete_pod("old")
        apiserver.expire_watches()  # the events above are gone with the history
    else:
        apiserver.watch_gate.clear()
        apiserver.close_watches()
        apiserver.add_pod(make_pod("new", [("c", 20, 2)]))
        apiserver.delete_pod("old")
        apiserver.compact()
        apiserver.watch_gate.set()
    wait_until(lambda: watch.relists == 2, what="a second list")
    in_sync(watch, apiserver)
    assert pending(watch) == [("new", "c")]


def test_api_server_down_unsyncs_until_a_list_succeeds(
    apiserver: FakeApiServer, watch: PodWatch
) -> None:
    apiserver.add_pod(make_pod("a", [("c", 30, 4)]))
    watch.start()
    in_sync(watch, apiserver)
    apiserver.fail_with = 503
    apiserver.close_watches()
    wait_until(lambda: not watch.synced, what="cache out of sync")
    assert watch.pending_containers() is None
    apiserver.add_pod(make_pod("b", [("c", 30, 4)]))
    apiserver.fail_with = None
    in_sync(watch, apiserver)
    assert pending(watch) == [("a", "c"), ("b", "c")]
    assert watch.relists == 2


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"type": "ADDED"}', id="no-object"),
        pytest.param(b'{"type": "ADDED", "object": {"metadata": {}}}', id="pod-without-name"),
        pytest.param(b'{"type": "SHRUGGED", "object": {}}', id="unknown-type"),
        pytest.param(b'{"type": "ERROR", "object": {"code": 500}}', id="error-event"),
    ],
)
def test_unreadable_event_makes_the_cache_list_again(
    apiserver: FakeApiServer, watch: PodWatch, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    watch.start()
    in_sync(watch, apiserver)
    apiserver.send_raw_watch_line(line)
    wait_until(lambda: watch.relists == 2, what="a second list")
    apiserver.add_pod(make_pod("a", [("c", 30, 4)]))
    in_sync(watch, apiserver)
    assert pending(watch) == [("a", "c")]
    assert "pod cache of node node-a out of sync" in caplog.text


class _StillStream:
    """A watch on which nothing happens until it is closed."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._closed.wait(10)
        return iter(())

    def close(self) -> None:
        self._closed.set()


class _FailingOnceSource:
    """A `PodWatchSource` whose first list fails with an error no client should raise."""

    def __init__(self) -> None:
        self.lists = 0

    def list_node_pods(self, node_name: str) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        if self.lists == 1:
            raise RuntimeError("a bug, not the API server")
        return [make_pod("a", [("c", 30, 4)], node=node_name)], "7"

    def watch_node_pods(
        self, node_name: str, resource_version: str, timeout_seconds: int
    ) -> _StillStream:
        return _StillStream()


def test_unexpected_failure_leaves_the_cache_out_of_sync_and_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = _FailingOnceSource()
    watch = PodWatch(source, NODE, retry_seconds=0.05).start()
    try:
        wait_until(lambda: watch.synced, what="a list after the failure")
        assert pending(watch) == [("a", "c")]
        assert watch.resource_version == "7"
        assert source.lists == 2
        assert "failed unexpectedly" in caplog.text
    finally:
        watch.stop()
    assert not watch.running
    assert watch.pending_containers() is None  # stopped: Allocate asks the API server


def test_allocate_is_answered_from_the_cache(make_node: NodeFactory) -> None:
    node = make_node(pod_watch=True)
    first = make_pod("a", [("c", 30, 4)], annotations={LIMIT: "90"})
    second = make_pod("b", [("c", 30, 4)], annotations={LIMIT: "50"})
    node.apiserver.add_pod(first)
    node.apiserver.add_pod(second)
    node.sync()
    got = node.kubelet.admit(first)["c"]
    assert got.envs["GPUSHARE_CORE_LIMIT"] == "30"
    assert got.envs["GPUSHARE_CORE_SOFT_LIMIT"] == "50"  # identical requests: the smaller
    assert got.envs["GPUSHARE_MEMORY_LIMIT"] == str(4 * MIB256)
    assert node.kubelet.admit(second)["c"].envs["GPUSHARE_CORE_SOFT_LIMIT"] == "50"
    owners = {a.owner.pod for a in node.manager.allocations() if a.owner is not None}
    assert owners == {"a", "b"}
    assert node.manager.pod_lists == 0  # no API server round trip on the Allocate path


def test_pod_not_yet_in_the_cache_is_listed_from_the_api_server(make_node: NodeFactory) -> None:
    node = make_node(pod_watch=True)
    node.sync()
    node.apiserver.watch_gate.clear()  # the cache is synced but misses what follows
    node.apiserver.close_watches()
    pod = make_pod("late", [("c", 30, 4)], annotations={LIMIT: "60"})
    node.apiserver.add_pod(pod)
    try:
        got = node.kubelet.admit(pod)["c"]
    finally:
        node.apiserver.watch_gate.set()
    assert got.envs["GPUSHARE_CORE_SOFT_LIMIT"] == "60"
    owners = {a.owner.pod for a in node.manager.allocations() if a.owner is not None}
    assert owners == {"late"}
    assert node.manager.pod_lists >= 1


def test_cache_out_of_sync_falls_back_to_listing(make_node: NodeFactory) -> None:
    node = make_node(pod_watch=True)
    node.sync()
    node.apiserver.fail_with = 503
    node.apiserver.close_watches()
    assert node.watch is not None
    watch = node.watch
    wait_until(lambda: not watch.synced, what="cache out of sync")
    pod = make_pod("p", [("c", 25, 6)], annotations={LIMIT: "70"})
    node.apiserver.add_pod(pod)
    # the list fails too: the assignment cannot be read, so the pod is refused, not guessed
    with pytest.raises(grpc.RpcError) as refused:
        node.kubelet.admit(pod)
    assert "gpushare.io/gpu-assignment" in str(refused.value.details())
    assert node.manager.pod_lists >= 1
    node.apiserver.fail_with = None
    got = node.kubelet.admit(pod)["c"]  # kubelet retries the pod: the list answers now
    assert got.envs["GPUSHARE_CORE_SOFT_LIMIT"] == "70"


def test_daemon_keeps_a_pod_cache_and_allocates_from_it(
    short_dir: Path, apiserver: FakeApiServer
) -> None:
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    daemon = simulated_daemon(short_dir, apiserver)
    daemon.start()
    try:
        watch = daemon.pod_watch
        assert watch is not None and watch.running
        wait_until(lambda: len(kubelet.health(MEMORY)) == 128, what="devices listed")
        pod = make_pod("p", [("c", 30, 4)], annotations={LIMIT: "80"})
        apiserver.add_pod(pod)
        in_sync(watch, apiserver)
        got = kubelet.admit(pod)["c"]
        assert got.envs["GPUSHARE_CORE_SOFT_LIMIT"] == "80"
        assert daemon.manager.pod_lists == 0
    finally:
        daemon.stop()
        kubelet.stop()
    assert not watch.running  # stop() ended the watch, blocked as it was on the stream
