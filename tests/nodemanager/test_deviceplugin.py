"""The device plugin as kubelet sees it: real gRPC over unix sockets, a fake kubelet."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import pytest
from nodemanager.api import deviceplugin_pb2 as dp
from nodemanager.devices import Kind

from tests.nodemanager.conftest import NodeFactory
from tests.nodemanager.fake_apiserver import make_pod
from tests.nodemanager.fake_kubelet import CORE, MEMORY
from tests.polling import wait_until

MIB256 = 256 << 20
HOOK = "/usr/local/gpushare/lib/libgpushare-vgpu.so"


def gpus_of(ids: list[str]) -> set[str]:
    return {device.rsplit("-", 2)[0] for device in ids}


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        pytest.param(
            [("train", 50, 15)],
            {"train": {"core": "50", "memory": str(15 * MIB256), "gpus": 1, "preload": True}},
            id="shared-50-core-15-memory",
        ),
        pytest.param(
            [("train", 100, 0)],
            {"train": {"core": "100", "memory": None, "gpus": 1, "preload": False}},
            id="whole-gpu-100",
        ),
        pytest.param(
            [("train", 200, 0)],
            {"train": {"core": "100", "memory": None, "gpus": 2, "preload": False}},
            id="two-whole-gpus-200",
        ),
        pytest.param(
            [("train", 200, 40)],
            {"train": {"core": "100", "memory": str(20 * MIB256), "gpus": 2, "preload": False}},
            id="two-whole-gpus-200-memory-split",
        ),
        pytest.param(
            [("web", 30, 8), ("worker", 20, 4)],
            {
                "web": {"core": "30", "memory": str(8 * MIB256), "gpus": 1, "preload": True},
                "worker": {"core": "20", "memory": str(4 * MIB256), "gpus": 1, "preload": True},
            },
            id="multi-container-shared",
        ),
    ],
)
def test_allocate_hands_each_container_its_limits(
    make_node: NodeFactory, containers: list[tuple[str, int, int]], expected: dict[str, Any]
) -> None:
    node = make_node()
    pod = make_pod("p1", containers)
    node.apiserver.add_pod(pod)
    granted = node.kubelet.admit(pod)
    assert set(granted) == set(expected)
    for name, want in expected.items():
        got = granted[name]
        gpus = gpus_of(got.devices[CORE])
        assert len(gpus) == want["gpus"]
        if MEMORY in got.devices:
            assert gpus_of(got.devices[MEMORY]) <= gpus  # memory on the container's GPU(s)
        assert got.envs["GPUSHARE_CORE_LIMIT"] == want["core"]
        assert got.envs.get("GPUSHARE_MEMORY_LIMIT") == want["memory"]
        assert got.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(sorted(gpus))
        assert got.envs["GPUSHARE_STATE_DIR"] == "/var/run/gpushare"
        assert (got.envs.get("LD_PRELOAD") == HOOK) is want["preload"]
        mounts = {container: (host, ro) for container, host, ro in got.mounts}
        state_host, state_ro = mounts["/var/run/gpushare"]
        assert not state_ro
        assert state_host.endswith(got.envs["GPUSHARE_ALLOCATION_ID"])
        if want["preload"]:
            assert mounts["/usr/local/gpushare/lib"] == (str(node.paths.hook_library_dir), True)
    owners = {a.owner.container for a in node.manager.allocations() if a.owner}
    assert owners == set(expected)


def test_multi_container_pod_with_init_container(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("p1", [("main", 40, 10)], init_containers=[("setup", 10, 2)])
    node.apiserver.add_pod(pod)
    granted = node.kubelet.admit(pod)
    assert granted["setup"].envs["GPUSHARE_CORE_LIMIT"] == "10"
    assert granted["main"].envs["GPUSHARE_CORE_LIMIT"] == "40"
    assert granted["main"].envs["GPUSHARE_MEMORY_LIMIT"] == str(10 * MIB256)


@pytest.mark.parametrize(
    ("existing", "request_", "assigned"),
    [
        pytest.param([(30, 8)], (20, 4), 1, id="empty-gpu-as-recorded"),
        pytest.param([(30, 8)], (20, 4), 0, id="used-gpu-as-recorded"),
        pytest.param([(80, 4), (10, 4)], (10, 4), 0, id="fullest-gpu-as-recorded"),
    ],
)
def test_each_container_gets_the_gpu_recorded_on_its_pod(
    make_node: NodeFactory,
    existing: list[tuple[int, int]],
    request_: tuple[int, int],
    assigned: int,
) -> None:
    node = make_node()
    for number, (core, memory) in enumerate(existing):
        pod = make_pod(f"old{number}", [("c", core, memory)], gpus={"c": [node.uuid(number % 2)]})
        node.apiserver.add_pod(pod)
        node.kubelet.admit(pod)
    pod = make_pod("new", [("c", *request_)], gpus={"c": [node.uuid(assigned)]})
    node.apiserver.add_pod(pod)
    granted = node.kubelet.admit(pod)["c"]
    assert gpus_of(granted.devices[CORE]) == {node.uuid(assigned)}
    assert gpus_of(granted.devices[MEMORY]) == {node.uuid(assigned)}


def test_memory_allocated_before_cores_lands_on_the_same_gpu(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("second", [("c", 40, 20)], gpus={"c": [node.uuid(1)]})
    node.apiserver.add_pod(pod)
    granted = node.kubelet.admit(pod, order=(MEMORY, CORE))["c"]
    assert gpus_of(granted.devices[CORE]) == gpus_of(granted.devices[MEMORY]) == {node.uuid(1)}


def test_pods_admitted_in_any_order_get_their_own_gpus(make_node: NodeFactory) -> None:
    node = make_node()
    # no two share a size with different GPUs: the extender never leaves such pods waiting
    shapes = {"a": ("c", 60, 24, 0), "b": ("c", 40, 40, 1), "c": ("c", 30, 24, 0)}
    pods = {
        name: make_pod(name, [(cname, core, memory)], gpus={cname: [node.uuid(gpu)]})
        for name, (cname, core, memory, gpu) in shapes.items()
    }
    for pod in pods.values():
        node.apiserver.add_pod(pod)
    for name in ("c", "b", "a"):  # not the creation order
        granted = node.kubelet.admit(pods[name])["c"]
        expected = {node.uuid(shapes[name][3])}
        assert gpus_of(granted.devices[CORE]) == gpus_of(granted.devices[MEMORY]) == expected


def test_a_pod_without_an_assignment_is_refused_with_the_reason(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("p", [("c", 30, 4)], gpus=None)
    node.apiserver.add_pod(pod)
    with pytest.raises(grpc.RpcError) as refused:
        node.kubelet.admit(pod)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = str(refused.value.details())
    assert "gpushare.io/gpu-assignment" in details
    assert "schedulerName gpushare-scheduler" in details
    assert node.manager.allocations() == []


def test_devices_off_the_assigned_gpu_are_refused(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("p", [("c", 30, 4)], gpus={"c": [node.uuid(1)]})
    node.apiserver.add_pod(pod)
    stub = node.kubelet.stub(CORE)
    ids = [f"{node.uuid(0)}-core-{n}" for n in range(30)]
    with pytest.raises(grpc.RpcError) as refused:
        stub.Allocate(
            dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=ids)]),
            timeout=5,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "is assigned GPU 1" in str(refused.value.details())


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        pytest.param({"tencent.com/vcuda-core-limit": "80"}, "80", id="burst-80"),
        pytest.param({}, "30", id="no-burst-equals-limit"),
        pytest.param({"tencent.com/vcuda-core-limit": "20"}, "30", id="burst-below-core-ignored"),
        pytest.param({"tencent.com/vcuda-core-limit": "x"}, "30", id="burst-garbage-ignored"),
    ],
)
def test_soft_limit_comes_from_the_pod_annotation(
    make_node: NodeFactory, annotations: dict[str, str], expected: str
) -> None:
    node = make_node()
    pod = make_pod("p1", [("c", 30, 4)], annotations=annotations)
    node.apiserver.add_pod(pod)
    granted = node.kubelet.admit(pod)["c"]
    assert granted.envs["GPUSHARE_CORE_SOFT_LIMIT"] == expected


@pytest.mark.parametrize(
    ("core", "annotations", "soft", "sm"),
    [
        pytest.param(
            30,
            {"gpushare.io/quota-request": "0.3", "gpushare.io/quota-limit": "0.75"},
            "75",
            None,
            id="quota-limit-is-the-burst",
        ),
        pytest.param(
            30,
            {"tencent.com/vcuda-core-limit": "90", "gpushare.io/quota-limit": "0.456"},
            "45",
            None,
            id="smaller-ceiling-rounded-down",
        ),
        pytest.param(30, {"gpushare.io/sm-partition": "40"}, "30", "40", id="sm-partition-for-mps"),
        pytest.param(
            100, {"gpushare.io/sm-partition": "25"}, "100", "25", id="sm-partition-whole-gpu"
        ),
        pytest.param(30, {"gpushare.io/sm-partition": "100"}, "30", None, id="all-sms-no-env"),
    ],
)
@pytest.mark.parametrize(
    "pod_watch", [pytest.param(False, id="listed"), pytest.param(True, id="from-pod-cache")]
)
def test_quota_annotations_reach_the_container(
    make_node: NodeFactory,
    pod_watch: bool,
    core: int,
    annotations: dict[str, str],
    soft: str,
    sm: str | None,
) -> None:
    node = make_node(pod_watch=pod_watch)
    pod = make_pod("p1", [("c", core, 4)], annotations=annotations)
    node.apiserver.add_pod(pod)
    if pod_watch:
        node.sync()
    granted = node.kubelet.admit(pod)["c"]
    if pod_watch:
        assert node.manager.pod_lists == 0  # answered from the watched pods
    assert granted.envs["GPUSHARE_CORE_LIMIT"] == str(min(core, 100))
    assert granted.envs["GPUSHARE_CORE_SOFT_LIMIT"] == soft
    assert granted.envs.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE") == sm
    (allocation,) = [a for a in node.manager.allocations() if a.kind is Kind.CORE]
    assert allocation.sm_partition == int(sm or 0)


def test_identical_requests_get_right_limits_and_own_state(make_node: NodeFactory) -> None:
    node = make_node()
    same = "2026-01-01T00:00:00Z"
    first = make_pod("a", [("c", 30, 4)], created=same)
    second = make_pod("b", [("c", 30, 4)], created=same)
    node.apiserver.add_pod(first)
    node.apiserver.add_pod(second)
    # kubelet admits b first although a sorts first: the match is wrong, the limits are not
    got_b = node.kubelet.admit(second)["c"]
    got_a = node.kubelet.admit(first)["c"]
    for got in (got_a, got_b):
        assert got.envs["GPUSHARE_CORE_LIMIT"] == "30"
        assert got.envs["GPUSHARE_MEMORY_LIMIT"] == str(4 * MIB256)
    assert got_a.envs["GPUSHARE_ALLOCATION_ID"] != got_b.envs["GPUSHARE_ALLOCATION_ID"]
    # PodResources then confirms who holds what
    assert node.manager.reconcile()
    by_id = {a.id: a.owner for a in node.manager.allocations() if a.owner is not None}
    assert len(by_id) == 4
    assert by_id[got_a.envs["GPUSHARE_ALLOCATION_ID"]].pod == "a"
    assert by_id[got_b.envs["GPUSHARE_ALLOCATION_ID"]].pod == "b"
    assert all(owner.confirmed for owner in by_id.values())


def test_identical_requests_with_different_burst_get_the_smaller(make_node: NodeFactory) -> None:
    node = make_node()
    limit = "tencent.com/vcuda-core-limit"
    first = make_pod("a", [("c", 30, 4)], annotations={limit: "90"})
    second = make_pod("b", [("c", 30, 4)], annotations={limit: "50"})
    node.apiserver.add_pod(first)
    node.apiserver.add_pod(second)
    assert node.kubelet.admit(first)["c"].envs["GPUSHARE_CORE_SOFT_LIMIT"] == "50"
    # once one is served, the other is the only candidate left: its own value
    assert node.kubelet.admit(second)["c"].envs["GPUSHARE_CORE_SOFT_LIMIT"] in ("50", "90")


def test_api_server_down_refuses_rather_than_guesses(make_node: NodeFactory) -> None:
    node = make_node()
    node.apiserver.fail_with = 503
    pod = make_pod("p1", [("c", 25, 6)])
    with pytest.raises(grpc.RpcError) as refused:
        node.kubelet.admit(pod)
    assert "gpushare.io/gpu-assignment" in str(refused.value.details())


def test_unhealthy_gpu_devices_become_unhealthy(make_node: NodeFactory) -> None:
    node = make_node()
    bad = node.uuid(1)
    node.inventory.set_healthy(1, False)
    assert node.manager.check_health()

    def marked(resource: str) -> bool:
        return all(
            (health == "Unhealthy") == device.startswith(bad)
            for device, health in node.kubelet.health(resource).items()
        )

    wait_until(lambda: marked(CORE) and marked(MEMORY), what="devices of GPU 1 unhealthy")
    assert Counter(node.kubelet.health(CORE).values()) == {"Healthy": 100, "Unhealthy": 100}
    node.inventory.set_healthy(1, True)
    assert node.manager.check_health()
    wait_until(lambda: set(node.kubelet.health(CORE).values()) == {"Healthy"}, what="recovery")


def test_kubelet_restart_triggers_registration_again(make_node: NodeFactory) -> None:
    node = make_node()
    before = node.runner.registrations
    node.kubelet.restart()
    wait_until(lambda: node.runner.registrations > before, what="re-registration")
    wait_until(lambda: node.kubelet.registered(CORE) == 2, what="kubelet sees a second Register")
    wait_until(lambda: bool(node.kubelet.health(CORE)), what="ListAndWatch after restart")
    pod = make_pod("after", [("c", 10, 2)])
    node.apiserver.add_pod(pod)
    assert node.kubelet.admit(pod)["c"].envs["GPUSHARE_CORE_LIMIT"] == "10"


def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.mark.parametrize(
    ("resource", "method", "make_request", "code", "message"),
    [
        pytest.param(
            CORE,
            "Allocate",
            lambda uuid0, uuid1: dp.AllocateRequest(
                container_requests=[dp.ContainerAllocateRequest(devices_ids=["nope-core-1"])]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown tencent.com/vcuda-core device ID 'nope-core-1'",
            id="unknown-device-id",
        ),
        pytest.param(
            CORE,
            "Allocate",
            lambda uuid0, uuid1: dp.AllocateRequest(
                container_requests=[dp.ContainerAllocateRequest(devices_ids=[f"{uuid0}-core-100"])]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "offers numbers 0..99",
            id="device-number-out-of-range",
        ),
        pytest.param(
            CORE,
            "Allocate",
            lambda uuid0, uuid1: dp.AllocateRequest(
                container_requests=[
                    dp.ContainerAllocateRequest(devices_ids=[f"{uuid0}-core-1", f"{uuid1}-core-1"])
                ]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is a share of one GPU, but the device IDs span GPUs GPU 0 (1), GPU 1 (1)",
            id="shared-request-split-over-gpus",
        ),
        pytest.param(
            CORE,
            "Allocate",
            lambda uuid0, uuid1: dp.AllocateRequest(
                container_requests=[
                    dp.ContainerAllocateRequest(
                        devices_ids=[f"{uuid0}-core-{n}" for n in range(50)]
                        + [f"{uuid1}-core-{n}" for n in range(50)]
                    )
                ]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "asks for whole GPUs, which needs all 100 devices of each GPU",
            id="whole-gpu-request-split",
        ),
        pytest.param(
            MEMORY,
            "GetPreferredAllocation",
            lambda uuid0, uuid1: dp.PreferredAllocationRequest(
                container_requests=[
                    dp.ContainerPreferredAllocationRequest(
                        available_deviceIDs=[f"{uuid0}-mem-{n}" for n in range(64)]
                        + [f"{uuid1}-mem-{n}" for n in range(64)],
                        allocation_size=65,
                    )
                ]
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "no pod bound to node node-a and waiting for allocation has a container asking 65",
            id="no-pod-assigned-this-size",
        ),
        pytest.param(
            CORE,
            "GetPreferredAllocation",
            lambda uuid0, uuid1: dp.PreferredAllocationRequest(
                container_requests=[
                    dp.ContainerPreferredAllocationRequest(
                        available_deviceIDs=[f"{uuid0}-core-{n}" for n in range(10)],
                        allocation_size=20,
                    )
                ]
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "20 devices asked, 10 available",
            id="more-than-available",
        ),
    ],
)
def test_bad_requests_get_grpc_errors_and_the_plugin_keeps_serving(
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
    assert message in details
    pod = make_pod("fine", [("c", 10, 2)])
    node.apiserver.add_pod(pod)
    assert node.kubelet.admit(pod)["c"].envs["GPUSHARE_CORE_LIMIT"] == "10"


def test_an_assignment_to_a_full_gpu_is_refused(make_node: NodeFactory) -> None:
    node = make_node()
    first = make_pod("p0", [("c", 60, 4)], gpus={"c": [node.uuid(0)]})
    node.apiserver.add_pod(first)
    node.kubelet.admit(first)
    pod = make_pod("big", [("c", 50, 4)], gpus={"c": [node.uuid(0)]})
    node.apiserver.add_pod(pod)
    code, details = _status(lambda: node.kubelet.admit(pod))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == (
        "tencent.com/vcuda-core: 50 devices asked, but the chosen GPU(s) have only 40 of them"
        " available"
    )


def test_allocate_on_an_unhealthy_gpu_is_refused(make_node: NodeFactory) -> None:
    node = make_node()
    node.inventory.set_healthy(0, False)
    node.manager.check_health()
    request = dp.AllocateRequest(
        container_requests=[dp.ContainerAllocateRequest(devices_ids=[f"{node.uuid(0)}-core-3"])]
    )
    code, details = _status(lambda: node.kubelet.stub(CORE).Allocate(request, timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "tencent.com/vcuda-core: GPU 0 is unhealthy"
    pod = make_pod("p", [("c", 10, 2)], gpus={"c": [node.uuid(1)]})
    node.apiserver.add_pod(pod)
    wait_until(lambda: node.kubelet.health(CORE).get(f"{node.uuid(0)}-core-0") == "Unhealthy")
    got = node.kubelet.admit(pod)["c"]
    assert got.envs["NVIDIA_VISIBLE_DEVICES"] == node.uuid(1)


def test_preferred_allocation_keeps_devices_kubelet_reuses(make_node: NodeFactory) -> None:
    node = make_node()
    busy = make_pod("busy", [("c", 50, 4)], created="2026-01-01T00:00:00Z")
    node.apiserver.add_pod(busy)
    node.kubelet.admit(busy)
    gpu0, gpu1 = node.uuid(0), node.uuid(1)
    node.apiserver.add_pod(make_pod("next", [("c", 20, 4)], gpus={"c": [gpu1]}))
    reused = [f"{gpu1}-core-{n}" for n in range(5)]
    available = [f"{gpu0}-core-{n}" for n in range(50, 100)] + [
        f"{gpu1}-core-{n}" for n in range(100)
    ]
    reply = node.kubelet.stub(CORE).GetPreferredAllocation(
        dp.PreferredAllocationRequest(
            container_requests=[
                dp.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=reused,
                    allocation_size=20,
                )
            ]
        ),
        timeout=5,
    )
    chosen = list(reply.container_responses[0].deviceIDs)
    assert len(chosen) == 20
    assert chosen[:5] == reused
    assert gpus_of(chosen) == {gpu1}


def test_unusable_state_directory_is_a_clear_error(make_node: NodeFactory) -> None:
    node = make_node()
    node.paths.state_root.parent.mkdir(parents=True, exist_ok=True)
    node.paths.state_root.write_text("not a directory")
    pod = make_pod("p", [("c", 10, 2)])
    node.apiserver.add_pod(pod)
    code, details = _status(lambda: node.kubelet.admit(pod))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith(f"cannot create the state directory {node.paths.state_root}/")
    assert node.manager.allocations() == []
