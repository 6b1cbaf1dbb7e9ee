"""Prometheus metrics: per GPU allocation, per container limits against what NVML sees."""

from __future__ import annotations

from pathlib import Path

from nodemanager.inventory import ProcessSample
from nodemanager.metrics import ProcEnvironAttribution, registry_for
from prometheus_client import generate_latest

from tests.nodemanager.conftest import NodeFactory
from tests.nodemanager.fake_apiserver import make_pod

MIB256 = 256 << 20


class FakeAttribution:
    def __init__(self, table: dict[int, str]) -> None:
        self.table = table

    def allocation_of(self, pid: int) -> str | None:
        return self.table.get(pid)


def samples(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric in the exposition text."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) :].rsplit(" ", 1)
            found[labels] = float(value)
    return found


def test_metrics_per_gpu_and_per_container(make_node: NodeFactory) -> None:
    node = make_node()
    pod = make_pod("p", [("c", 30, 4)])
    node.apiserver.add_pod(pod)
    allocation_id = node.kubelet.admit(pod)["c"].envs["GPUSHARE_ALLOCATION_ID"]
    node.inventory.set_processes(
        0,
        [
            ProcessSample(pid=11, memory_used_bytes=300 << 20, sm_percent=20.0),
            ProcessSample(pid=12, memory_used_bytes=100 << 20, sm_percent=5.0),
            ProcessSample(pid=99, memory_used_bytes=1 << 30, sm_percent=50.0),  # not ours
        ],
    )
    registry = registry_for(node.manager, FakeAttribution({11: allocation_id, 12: allocation_id}))
    text = generate_latest(registry).decode()
    gpu0 = f'{{gpu="0",node="node-a",uuid="{node.uuid(0)}"}}'
    assert samples(text, "gpushare_gpu_cores_allocated")[gpu0] == 30
    assert samples(text, "gpushare_gpu_memory_allocated_bytes")[gpu0] == 4 * MIB256
    assert samples(text, "gpushare_gpu_memory_total_bytes")[gpu0] == 16 << 30
    assert samples(text, "gpushare_gpu_healthy")[gpu0] == 1
    container = (
        f'{{allocation="{allocation_id}",container="c",gpu="0",namespace="team-a",'
        f'node="node-a",pod="p"}}'
    )
    assert samples(text, "gpushare_container_core_share_percent") == {container: 30}
    assert samples(text, "gpushare_container_memory_limit_bytes") == {container: 4 * MIB256}
    assert samples(text, "gpushare_container_memory_used_bytes") == {container: 400 << 20}
    assert samples(text, "gpushare_container_sm_utilization_percent") == {container: 25}


def test_processes_are_tied_to_allocations_through_their_environment(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "environ").write_bytes(b"PATH=/bin\0GPUSHARE_ALLOCATION_ID=abc123\0")
    (tmp_path / "43").mkdir()
    (tmp_path / "43" / "environ").write_bytes(b"PATH=/bin\0")
    attribution = ProcEnvironAttribution(str(tmp_path))
    assert attribution.allocation_of(42) == "abc123"
    assert attribution.allocation_of(43) is None
    assert attribution.allocation_of(44) is None
