"""The environment the node manager hands a container, read by the compiled hook's own
configuration parser: every value accepted (no fail-closed error) and the limits as meant."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from nodemanager.devices import Kind
from nodemanager.inventory import SimulatedInventory
from nodemanager.manager import NodeManager, Paths

from gpushare.resources import USAGE_DIR
from sidecar.usage_files import parse_usage_file
from tests.hook.conftest import ToolRunner

# The hook tests' fixtures (re-exported names are used by pytest, not here).
from tests.hook.conftest import env_for as env_for
from tests.hook.conftest import hook_build as hook_build
from tests.hook.conftest import state_dir as state_dir
from tests.hook.conftest import tool as tool
from tests.nodemanager.fake_apiserver import make_pod

MIB256 = 256 << 20


class _Pods:
    """A PodSource with a fixed list of pending pods."""

    def __init__(self, pods: Sequence[Mapping[str, Any]]) -> None:
        self._pods = list(pods)

    def pending_pods(self, node_name: str) -> list[dict[str, Any]]:
        return [dict(pod) for pod in self._pods]


@pytest.mark.parametrize(
    ("core", "memory", "annotations", "expected"),
    [
        pytest.param(
            30,
            8,
            {"tencent.com/vcuda-core-limit": "80"},
            [f"devices: memory {8 * MIB256} bytes, core 30%, soft 80%"],
            id="shared-with-burst",
        ),
        pytest.param(
            30,
            8,
            {
                "tencent.com/vcuda-core-limit": "90",
                "gpushare.io/quota-request": "0.25",
                "gpushare.io/quota-limit": "0.659",
                "gpushare.io/sm-partition": "50",
            },
            [f"devices: memory {8 * MIB256} bytes, core 30%, soft 65%"],
            id="quota-limit-the-smaller-ceiling",
        ),
        pytest.param(
            1, 1, {}, [f"devices: memory {MIB256} bytes, core 1%, soft 1%"], id="smallest-share"
        ),
        pytest.param(
            200,
            11,
            {},
            [
                f"devices: memory {6 * MIB256} bytes, core 100%, soft 100%",
                f"device 1: memory {5 * MIB256} bytes, core 100%, soft 100%",
            ],
            id="two-whole-gpus-memory-split",
        ),
    ],
)
def test_the_hook_accepts_what_the_node_manager_hands_out(
    tool: ToolRunner,
    tmp_path: Path,
    core: int,
    memory: int,
    annotations: dict[str, str],
    expected: list[str],
) -> None:
    inventory = SimulatedInventory(2, 16 << 30)
    manager = NodeManager(
        node_name="node-a",
        inventory=inventory,
        paths=Paths(tmp_path / "lib", tmp_path / "state", tmp_path / "checkpoint.json"),
        pod_source=_Pods([make_pod("p", [("c", core, memory)], annotations=annotations)]),
    )
    envs: dict[str, str] = {}
    for kind, size in ((Kind.CORE, core), (Kind.MEMORY, memory)):
        available = [device for device, _healthy in manager.devices(kind)]
        chosen = manager.preferred(kind, available, [], size)
        envs.update(manager.allocate(kind, chosen).envs)
    # The container's paths do not exist here; the hook test harness sets its own.
    for name in ("LD_PRELOAD", "GPUSHARE_STATE_DIR"):
        envs.pop(name, None)
    assert envs["GPUSHARE_USAGE_DIR"] == USAGE_DIR  # where the webhook mounts the pod's folder
    envs["GPUSHARE_USAGE_DIR"] = str(tmp_path / "usage")
    (tmp_path / "usage").mkdir()
    run = tool("info", **envs)
    assert run.log_lines("error:") == []
    # the allocation id names the usage file the sidecar reads (once a context fits: the
    # smallest share's 256 MiB cannot hold the 512 MiB a context is charged before it exists)
    usage_file = tmp_path / "usage" / f"{envs['GPUSHARE_ALLOCATION_ID']}.json"
    if memory > 1:
        usage = parse_usage_file(usage_file.read_bytes())
        assert [device.index for device in usage.devices] == [0]
    (limits,) = run.log_lines("limits:")
    for part in expected:
        assert part in limits
