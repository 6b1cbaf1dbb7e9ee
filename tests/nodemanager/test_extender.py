"""Scheduler extender: the placement rules and the HTTP wire format of kube-scheduler."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from nodemanager.inventory import SimulatedInventory
from nodemanager.manager import NodeManager, Paths
from nodemanager.placement import Policy

from gpushare.annotations import NODE_GPU_CAPACITY
from tests.nodemanager.fake_apiserver import FakeApiServer, make_pod
from tests.polling import wait_until
from webhook import extender, placement
from webhook.nodecapacity import KubernetesNodeCapacity, StaticNodeCapacity


def capacity(gpus: list[tuple[int, int]], *, policy: str = "binpack", memory: int = 64) -> str:
    """Annotation for GPUs given as (cores used, memory units used)."""
    return json.dumps(
        {
            "version": 1,
            "policy": policy,
            "gpus": [
                {
                    "index": index,
                    "uuid": f"GPU-{index}",
                    "healthy": True,
                    "coreTotal": 100,
                    "coreFree": 100 - core,
                    "memoryTotal": memory,
                    "memoryFree": memory - used,
                }
                for index, (core, used) in enumerate(gpus)
            ],
        }
    )


def node(name: str, annotation: str | None) -> dict[str, Any]:
    annotations = {} if annotation is None else {NODE_GPU_CAPACITY: annotation}
    return {"metadata": {"name": name, "annotations": annotations}, "status": {}}


def args(pod: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"pod": pod, "nodes": {"apiVersion": "v1", "kind": "NodeList", "items": nodes}}


@pytest.fixture
def client() -> Iterator[FlaskClient]:
    app = Flask(__name__)
    app.register_blueprint(extender.blueprint)
    with app.test_client() as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("used", "containers", "fits", "reason"),
    [
        pytest.param(
            [(60, 4), (60, 4)],
            [("c", 50, 4)],
            False,
            'container "c" asks vcuda-core=50 and vcuda-memory=4; no single GPU has room for '
            "both; GPU 0: 40 cores and 60 memory units free; GPU 1: 40 cores and 60 memory "
            "units free",
            id="60-60-rejects-50",
        ),
        pytest.param([(60, 4), (60, 4)], [("c", 40, 4)], True, "", id="60-60-accepts-40"),
        pytest.param(
            [(10, 60), (10, 60)], [("c", 20, 8)], False, "no single GPU", id="memory-bound"
        ),
        pytest.param([(90, 0), (85, 0)], [("c", 20, 1)], False, "no single GPU", id="core-bound"),
        pytest.param([(0, 0), (30, 2)], [("c", 100, 0)], True, "", id="whole-gpu-one-free"),
        pytest.param(
            [(0, 0), (30, 2)],
            [("c", 200, 0)],
            False,
            'container "c" needs 2 entirely free GPU(s)',
            id="two-whole-gpus-one-free",
        ),
        pytest.param(
            [(50, 0), (50, 0)],
            [("a", 50, 4), ("b", 50, 4)],
            True,
            "",
            id="two-containers-fill-both-gpus",
        ),
        pytest.param(
            [(50, 0), (60, 0)],
            [("a", 50, 4), ("b", 50, 4)],
            False,
            'container "b" asks vcuda-core=50',
            id="two-containers-only-one-fits",
        ),
    ],
)
def test_fit(
    used: list[tuple[int, int]], containers: list[tuple[str, int, int]], fits: bool, reason: str
) -> None:
    gpus = placement.parse_capacity({NODE_GPU_CAPACITY: capacity(used)})
    demand = placement.pod_demand(make_pod("p", containers))
    result = placement.fit(gpus, demand)
    assert result.fits is fits
    assert reason in result.reason
    quick = placement.fits(gpus, demand)  # the filter's fast path agrees
    assert (quick.fits, quick.reason) == (result.fits, result.reason)


@pytest.mark.parametrize(
    ("policy", "expected_best"),
    [
        pytest.param("binpack", "full", id="binpack-prefers-fuller-node"),
        pytest.param("spread", "empty", id="spread-prefers-emptier-node"),
    ],
)
def test_prioritize_follows_the_node_policy(
    client: FlaskClient, policy: str, expected_best: str
) -> None:
    nodes = [
        node("full", capacity([(70, 40), (70, 40)], policy=policy)),
        node("empty", capacity([(0, 0), (0, 0)], policy=policy)),
    ]
    reply = client.post("/scheduler/prioritize", json=args(make_pod("p", [("c", 20, 4)]), nodes))
    assert reply.status_code == 200
    scores = {item["host"]: item["score"] for item in reply.get_json()}
    assert set(scores) == {"full", "empty"}
    assert all(0 <= value <= 10 for value in scores.values())
    assert max(scores, key=lambda host: scores[host]) == expected_best


def test_filter_wire_format(client: FlaskClient) -> None:
    nodes = [
        node("busy", capacity([(60, 4), (60, 4)])),
        node("free", capacity([(0, 0), (0, 0)])),
        node("plain", None),
        node("broken", "{not json"),
    ]
    reply = client.post("/scheduler/filter", json=args(make_pod("p", [("c", 50, 4)]), nodes))
    assert reply.status_code == 200
    body = reply.get_json()
    assert [item["metadata"]["name"] for item in body["nodes"]["items"]] == ["free"]
    assert body["nodes"]["kind"] == "NodeList"
    assert set(body["failedNodes"]) == {"busy"}
    assert "no single GPU has room" in body["failedNodes"]["busy"]
    assert body["failedAndUnresolvableNodes"] == {
        "plain": "node has no gpushare.io/gpu-capacity annotation "
        "(no gpushare node manager runs there)",
        "broken": body["failedAndUnresolvableNodes"]["broken"],
    }
    assert body["failedAndUnresolvableNodes"]["broken"].startswith(
        "gpushare.io/gpu-capacity is not JSON"
    )


def test_filter_passes_every_node_for_pods_without_gpus(client: FlaskClient) -> None:
    nodes = [node("plain", None), node("busy", capacity([(100, 64)]))]
    reply = client.post("/scheduler/filter", json=args(make_pod("p", [("c", 0, 0)]), nodes))
    assert [item["metadata"]["name"] for item in reply.get_json()["nodes"]["items"]] == [
        "plain",
        "busy",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("[]", "the body must be a JSON ExtenderArgs object", id="not-an-object"),
        pytest.param('{"nodes": {"items": []}}', "ExtenderArgs.pod must be a Pod", id="no-pod"),
        pytest.param(
            '{"pod": {}, "nodenames": ["a"]}', "nodeCacheCapable: false", id="node-names-only"
        ),
        pytest.param(
            json.dumps(
                args(
                    {
                        "spec": {
                            "containers": [
                                {
                                    "name": "c",
                                    "resources": {"limits": {"tencent.com/vcuda-core": "lots"}},
                                }
                            ]
                        }
                    },
                    [],
                )
            ),
            "pod rejected: container \"c\" asks tencent.com/vcuda-core='lots'",
            id="bad-quantity",
        ),
    ],
)
def test_filter_bad_arguments_answer_with_an_error(
    client: FlaskClient, body: str, message: str
) -> None:
    reply = client.post("/scheduler/filter", data=body, content_type="application/json")
    assert reply.status_code == 200
    assert message in reply.get_json()["error"]
    again = client.post("/scheduler/filter", json=args(make_pod("p", [("c", 10, 1)]), []))
    assert again.get_json()["nodes"]["items"] == []


@pytest.mark.parametrize(
    ("capacity_text", "message"),
    [
        pytest.param('{"version": 2, "gpus": []}', ".version must be 1 (got 2)", id="version"),
        pytest.param('{"version": 1, "gpus": {}}', ".gpus must be a list", id="gpus-not-list"),
        pytest.param(
            '{"version": 1, "gpus": [{"index": 0, "coreTotal": 100, "coreFree": -1, '
            '"memoryTotal": 4, "memoryFree": 4}]}',
            ".gpus[0].coreFree must be an integer >= 0 (got -1)",
            id="negative-free",
        ),
    ],
)
def test_capacity_annotation_errors_name_the_field(capacity_text: str, message: str) -> None:
    with pytest.raises(placement.CapacityError) as info:
        placement.parse_capacity({NODE_GPU_CAPACITY: capacity_text})
    assert message in str(info.value)


def test_node_manager_annotation_is_what_the_extender_reads(tmp_path: Path) -> None:
    manager = NodeManager(
        node_name="n",
        inventory=SimulatedInventory(2, 16 << 30),
        paths=Paths(tmp_path / "lib", tmp_path / "state", tmp_path / "checkpoint.json"),
        policy=Policy.SPREAD,
    )
    gpus = placement.parse_capacity({NODE_GPU_CAPACITY: manager.capacity_annotation()})
    assert gpus.policy == "spread"
    assert [(gpu.index, gpu.core_free, gpu.memory_free) for gpu in gpus.gpus] == [
        (0, 100, 64),
        (1, 100, 64),
    ]


def test_filter_and_prioritize_with_node_names_only() -> None:
    app = Flask(__name__)
    app.register_blueprint(extender.blueprint)
    extender.install_node_capacity(
        app,
        StaticNodeCapacity(
            {"busy": capacity([(60, 4), (60, 4)]), "free": capacity([(0, 0), (0, 0)])}
        ),
    )
    client = app.test_client()
    body = {"pod": make_pod("p", [("c", 50, 4)]), "nodenames": ["busy", "free", "plain"]}
    reply = client.post("/scheduler/filter", json=body).get_json()
    assert reply["nodenames"] == ["free"]
    assert set(reply["failedNodes"]) == {"busy"}
    assert set(reply["failedAndUnresolvableNodes"]) == {"plain"}
    scores = client.post("/scheduler/prioritize", json=body).get_json()
    assert [item["host"] for item in scores] == ["busy", "free", "plain"]
    assert scores[0]["score"] == 0 and scores[2]["score"] == 0


def test_node_capacity_cache_follows_the_api_server(apiserver: FakeApiServer) -> None:
    from kubernetes import client

    api = client.ApiClient(client.Configuration(host=apiserver.url))
    cache = KubernetesNodeCapacity(api, retry_seconds=0.05).start()
    try:
        apiserver._patch_node("n1", {"metadata": {"annotations": {NODE_GPU_CAPACITY: "x"}}})
        wait_until(lambda: cache.capacity_annotation("n1") == "x", what="annotation cached")
        apiserver._patch_node("n1", {"metadata": {"annotations": {NODE_GPU_CAPACITY: "y"}}})
        wait_until(lambda: cache.capacity_annotation("n1") == "y", what="annotation updated")
        assert cache.capacity_annotation("n2") is None
    finally:
        cache.stop()
