"""Hostile but well-formed gRPC requests: each gets a gRPC error naming the rule, and the
plugin keeps serving (real gRPC over unix sockets, a fake kubelet)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from nodemanager import plugin
from nodemanager.api import deviceplugin_pb2 as dp
from nodemanager.metrics import registry_for
from prometheus_client import generate_latest

from tests.nodemanager.conftest import NodeFactory
from tests.nodemanager.fake_apiserver import make_pod
from tests.nodemanager.fake_kubelet import CORE, MEMORY
from tests.polling import wait_until


def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def _allocate(*ids: str) -> dp.AllocateRequest:
    return dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=ids)])


def _preferred(available: list[str], size: int, must: list[str] | None = None) -> Any:
    return dp.PreferredAllocationRequest(
        container_requests=[
            dp.ContainerPreferredAllocationRequest(
                available_deviceIDs=available,
                must_include_deviceIDs=must or [],
                allocation_size=size,
            )
        ]
    )


@pytest.mark.parametrize(
    ("resource", "method", "make_request", "code", "message"),
    [
        pytest.param(
            CORE,
            "Allocate",
            lambda u0, u1: _allocate(f"{u0}-core-1", f"{u0}-core-1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "device ID '{u0}-core-1' is listed twice",
            id="allocate-duplicated-id",
        ),
        pytest.param(
            CORE,
            "Allocate",
            lambda u0, u1: _allocate(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Allocate without device IDs",
            id="allocate-empty-container-request",
        ),
        pytest.param(
            CORE,
            "Allocate",
            lambda u0, u1: _allocate(f"{u0}-mem-1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown tencent.com/vcuda-core device ID '{u0}-mem-1'",
            id="allocate-memory-id-to-core-plugin",
        ),
        pytest.param(
            MEMORY,
            "Allocate",
            lambda u0, u1: _allocate(""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown tencent.com/vcuda-memory device ID ''",
            id="allocate-empty-id",
        ),
        pytest.param(
            CORE,
            "Allocate",
            lambda u0, u1: _allocate(f"{u0}-core-x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown tencent.com/vcuda-core device ID '{u0}-core-x'",
            id="allocate-non-numeric-id",
        ),
        pytest.param(
            CORE,
            "Allocate",
            lambda u0, u1: _allocate(f"{u0}-core-05"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown tencent.com/vcuda-core device ID '{u0}-core-05'",
            id="allocate-id-with-leading-zero",
        ),
        pytest.param(
            MEMORY,
            "Allocate",
            lambda u0, u1: _allocate(f"{u0}-mem-\u0665"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown tencent.com/vcuda-memory device ID '{u0}-mem-\u0665'",
            id="allocate-id-with-non-ascii-digit",
        ),
        pytest.param(
            CORE,
            "GetPreferredAllocation",
            lambda u0, u1: _preferred([f"{u0}-core-{n}" for n in range(10)], 0),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "0 devices asked, 10 available",
            id="preferred-size-zero",
        ),
        pytest.param(
            CORE,
            "GetPreferredAllocation",
            lambda u0, u1: _preferred([f"{u0}-core-1", f"{u0}-core-1"], 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is listed twice",
            id="preferred-duplicated-available-id",
        ),
        pytest.param(
            CORE,
            "GetPreferredAllocation",
            lambda u0, u1: _preferred([f"{u0}-core-1"], 1, must=["GPU-nope-core-1"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown tencent.com/vcuda-core device ID 'GPU-nope-core-1'",
            id="preferred-unknown-must-include",
        ),
    ],
)
def test_hostile_requests_get_grpc_errors_and_the_plugin_keeps_serving(
    make_node: NodeFactory,
    resource: str,
    method: str,
    make_request: Any,
    code: grpc.StatusCode,
    message: str,
) -> None:
    node = make_node()
    stub = node.kubelet.stub(resource)
    got_code, details = _status(
        lambda: getattr(stub, method)(make_request(node.uuid(0), node.uuid(1)), timeout=5)
    )
    assert got_code == code
    assert message.replace("{u0}", node.uuid(0)) in details
    pod = make_pod("fine", [("c", 10, 2)])
    node.apiserver.add_pod(pod)
    assert node.kubelet.admit(pod)["c"].envs["GPUSHARE_CORE_LIMIT"] == "10"


def test_a_kubelet_that_drops_list_and_watch_again_and_again_starves_nothing(
    make_node: NodeFactory,
) -> None:
    """kubelet vanishing mid-ListAndWatch (more times than the plugin has worker threads):
    every dropped stream gives its thread back, and Allocate is still answered."""
    node = make_node()
    stub = node.kubelet.stub(CORE)
    for _ in range(12):
        stream = stub.ListAndWatch(dp.Empty())
        assert len(next(stream).devices) == 200  # the first list arrives at once
        stream.cancel()  # the peer goes away while the plugin waits for a change
    pod = make_pod("after", [("c", 10, 2)])
    node.apiserver.add_pod(pod)
    assert node.kubelet.admit(pod)["c"].envs["GPUSHARE_CORE_LIMIT"] == "10"
    node.inventory.set_healthy(1, False)
    assert node.manager.check_health()
    wait_until(
        lambda: list(node.kubelet.health(CORE).values()).count("Unhealthy") == 100,
        what="the kubelet's own stream still follows health",
    )


def test_idle_list_and_watch_streams_cannot_starve_allocate(make_node: NodeFactory) -> None:
    """Streams that are opened and then left alone hold a thread each while open: past the
    bound they are refused at once, and Allocate keeps its own threads."""
    node = make_node()
    stub = node.kubelet.stub(CORE)
    held = []
    refused = 0
    for _ in range(2 * plugin.MAX_WATCH_STREAMS + plugin.CALL_THREADS):
        stream = stub.ListAndWatch(dp.Empty(), timeout=30)
        try:
            assert len(next(stream).devices) == 200
            held.append(stream)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "ListAndWatch streams at once" in (err.details() or "")
            refused += 1
    try:
        # kubelet's own stream is one of the bound; every other one past it was refused.
        assert len(held) == plugin.MAX_WATCH_STREAMS - 1
        assert refused == plugin.MAX_WATCH_STREAMS + plugin.CALL_THREADS + 1
        pod = make_pod("while-watched", [("c", 10, 2)])
        node.apiserver.add_pod(pod)
        assert node.kubelet.admit(pod)["c"].envs["GPUSHARE_CORE_LIMIT"] == "10"
    finally:
        for stream in held:
            stream.cancel()


def test_a_huge_device_id_is_not_echoed(
    make_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node()
    stub = node.kubelet.stub(CORE)
    huge = "GPU-" + "x" * 1_000_000
    code, details = _status(lambda: stub.Allocate(_allocate(huge), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "(1000004 characters)" in details
    assert len(details) < 1000
    assert all(len(record.getMessage()) < 2000 for record in caplog.records)
    pod = make_pod("after", [("c", 10, 2)])
    node.apiserver.add_pod(pod)
    assert node.kubelet.admit(pod)["c"].envs["GPUSHARE_CORE_LIMIT"] == "10"


class _NoProcesses:
    def allocation_of(self, pid: int) -> str | None:
        return None


def test_refused_requests_add_no_metric_series(make_node: NodeFactory) -> None:
    """Labels come from this node's GPUs and granted allocations, never from what a caller
    sends: refused calls with invented IDs leave /metrics as it was."""
    node = make_node()
    registry = registry_for(node.manager, _NoProcesses())
    before = generate_latest(registry)
    stub = node.kubelet.stub(CORE)
    for index in range(50):
        _status(lambda index=index: stub.Allocate(_allocate(f"invented-{index}"), timeout=5))
    assert generate_latest(registry) == before
