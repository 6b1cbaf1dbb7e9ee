"""Allocations survive restarts; deleted pods are released; capacity reaches the node."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from nodemanager.devices import Kind
from nodemanager.kube import KubeletPodResources, KubernetesApi
from nodemanager.ledger import Allocation, CheckpointError, Ledger, Owner
from nodemanager.manager import NodeManager

from gpushare.assignment import NODE_GPU_INVENTORY
from tests.nodemanager.conftest import NODE, NodeFactory
from tests.nodemanager.fake_apiserver import make_pod


def restarted(node_manager: NodeManager, root: Path, url: str, grace: float) -> NodeManager:
    node_manager.flush_checkpoint()
    kubernetes = KubernetesApi.for_url(url)
    return NodeManager(
        node_name=NODE,
        inventory=node_manager.inventory,
        paths=node_manager.paths,
        pod_source=kubernetes,
        pod_resources=KubeletPodResources(str(root / "pr.sock")),
        publisher=kubernetes,
        release_grace_seconds=grace,
    )


def test_checkpoint_restores_allocations_and_releases_deleted_pods(
    make_node: NodeFactory,
) -> None:
    node = make_node()
    kept = make_pod("kept", [("c", 30, 4)], created="2026-01-01T00:00:00Z")
    gone = make_pod("gone", [("c", 40, 8)], created="2026-01-01T00:00:01Z")
    for pod in (kept, gone):
        node.apiserver.add_pod(pod)
    granted = {
        "kept": node.kubelet.admit(kept)["c"],
        "gone": node.kubelet.admit(gone)["c"],
    }
    node.manager.flush_checkpoint()
    checkpoint = json.loads(node.paths.checkpoint.read_text())
    assert checkpoint["version"] == 1
    assert len(checkpoint["allocations"]) == 4
    gone_state = node.paths.state_root / granted["gone"].envs["GPUSHARE_ALLOCATION_ID"]
    assert gone_state.is_dir()

    node.kubelet.remove_pod("team-a", "gone")
    fresh = restarted(node.manager, node.root, node.apiserver.url, grace=0)
    assert len(fresh.allocations()) == 4  # restored from the checkpoint
    assert fresh.reconcile()
    left = fresh.allocations()
    assert {(a.owner.pod if a.owner else None, a.kind) for a in left} == {
        ("kept", Kind.CORE),
        ("kept", Kind.MEMORY),
    }
    assert all(a.owner is not None and a.owner.confirmed for a in left)
    assert not gone_state.exists()
    assert [(gpu.core_free, gpu.memory_free) for gpu in fresh.capacities()] == [(70, 60), (100, 64)]
    fresh.flush_checkpoint()
    assert len(json.loads(node.paths.checkpoint.read_text())["allocations"]) == 2


def test_young_allocations_unknown_to_kubelet_are_kept(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("p", [("c", 30, 4)])
    node.apiserver.add_pod(pod)
    node.kubelet.admit(pod)
    node.kubelet.remove_pod("team-a", "p")
    fresh = restarted(node.manager, node.root, node.apiserver.url, grace=3600)
    assert fresh.reconcile()
    assert len(fresh.allocations()) == 2


def test_nothing_is_released_when_kubelet_cannot_be_asked(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("p", [("c", 30, 4)])
    node.apiserver.add_pod(pod)
    node.kubelet.admit(pod)
    node.kubelet.stop()
    fresh = restarted(node.manager, node.root, node.apiserver.url, grace=0)
    assert not fresh.reconcile()
    assert len(fresh.allocations()) == 2


def test_an_absent_kubelet_is_reported_once_not_every_period(
    make_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A node without kubelet (a demo with simulated GPUs) must not warn every reconcile."""
    node = make_node()
    node.kubelet.stop()
    fresh = restarted(node.manager, node.root, node.apiserver.url, grace=0)
    caplog.set_level(logging.DEBUG, logger="nodemanager")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and "cannot reconcile" in r.getMessage()
        ]

    for _ in range(3):
        assert not fresh.reconcile()
    assert len(warnings()) == 1
    assert "PodResources" in warnings()[0]
    node.kubelet.start()  # kubelet back: said once at info, and a later outage warns again
    assert fresh.reconcile()
    assert any("reconciling allocations again" in r.getMessage() for r in caplog.records)
    node.kubelet.stop()
    assert not fresh.reconcile()
    assert len(warnings()) == 2


def test_inventory_is_published_once_and_again_on_health_changes(make_node: NodeFactory) -> None:
    node = make_node()
    assert node.manager.publish()
    pod = make_pod("p", [("c", 30, 4)])
    node.apiserver.add_pod(pod)
    node.kubelet.admit(pod)
    assert not node.manager.publish()  # an allocation changes nothing on the node
    document = json.loads(node.apiserver.node_annotations(NODE)[NODE_GPU_INVENTORY])
    assert document == {
        "version": 1,
        "policy": "binpack",
        "gpus": [
            {"index": 0, "uuid": node.uuid(0), "memory": 64, "healthy": True},
            {"index": 1, "uuid": node.uuid(1), "memory": 64, "healthy": True},
        ],
    }
    node.apiserver.fail_with = 500
    node.inventory.set_healthy(1, False)
    node.manager.check_health()
    assert not node.manager.publish()  # the API server fails: logged, retried next round
    node.apiserver.fail_with = None
    assert node.manager.publish()
    document = json.loads(node.apiserver.node_annotations(NODE)[NODE_GPU_INVENTORY])
    assert document["gpus"][1]["healthy"] is False


def _allocation(allocation_id: str, device: str) -> Allocation:
    return Allocation(
        id=allocation_id,
        kind=Kind.CORE,
        device_ids=(device,),
        units_by_gpu={"GPU-x": 1},
        created_at=1.0,
        owner=Owner("ns", "pod", "c", "uid", confirmed=True),
    )


def test_ledger_reused_devices_displace_old_allocations(tmp_path: Path) -> None:
    ledger = Ledger()
    assert ledger.add(_allocation("old", "GPU-x-core-1")) == []
    displaced = ledger.add(_allocation("new", "GPU-x-core-1"))
    assert [item.id for item in displaced] == ["old"]
    ledger.save(tmp_path / "c.json")
    assert list(Ledger.load(tmp_path / "c.json").allocations) == ["new"]
    assert [path.name for path in tmp_path.iterdir()] == ["c.json"]  # no temporary left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("{", "is unreadable", id="not-json"),
        pytest.param(
            '{"version": 7, "allocations": []}', "version must be 1 (got 7)", id="version"
        ),
        pytest.param('{"version": 1, "allocations": [{}]}', "is unreadable", id="missing-fields"),
    ],
)
def test_bad_checkpoint_is_a_named_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text(content)
    with pytest.raises(CheckpointError) as info:
        Ledger.load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_lost_checkpoint_is_rebuilt_from_kubelet(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("p", [("c", 30, 4)])
    node.apiserver.add_pod(pod)
    node.kubelet.admit(pod)
    node.manager.flush_checkpoint()
    node.paths.checkpoint.unlink()
    fresh = restarted(node.manager, node.root, node.apiserver.url, grace=0)
    assert fresh.allocations() == []
    assert fresh.reconcile()
    assert sorted((a.kind, a.owner.pod if a.owner else "") for a in fresh.allocations()) == [
        (Kind.CORE, "p"),
        (Kind.MEMORY, "p"),
    ]
    assert [(gpu.core_free, gpu.memory_free) for gpu in fresh.capacities()] == [(70, 60), (100, 64)]
    assert fresh.reconcile()  # adopting twice changes nothing
    assert len(fresh.allocations()) == 2
