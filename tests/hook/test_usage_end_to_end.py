"""Used versus allocated, end to end on the shared-GPU model: a workload under the compiled
hook, with the environment the node manager hands its container, writes its usage file into
the pod's usage folder; the real `gpushare sidecar` reads that folder and reports to the real
timekeeper; `gpushare usage --idle` then shows the idle share the model's ground truth gives.

The container holds 50 % of a GPU and keeps it busy 1 ms in every 10 ms: it uses a tenth of
the GPU, a fifth of what it holds, so its idle share is about 0.8. The exact figure is taken
from the model (the SM time the container's tenant received over the workload's run).

Tolerances: the hook's busy time follows NVML's whole-percent readings (rounded, half a point
at most of the elapsed time), and a report's `smUtilization` is the average over its samples
of busy time over elapsed time between two file readings, so the reports' share of use
differs from the truth by well under a point of the GPU; 0.04 of idle share is 2 points of
the GPU (for a 50 % share), which leaves room for the machine's stalls. The model's own
figure may stray from 0.8 when the paced launcher wakes late: 0.06 allows for that.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from nodemanager.devices import Kind
from nodemanager.inventory import SimulatedInventory
from nodemanager.manager import NodeManager, Paths

from tests.hook.conftest import hook_environment, parse_lines
from tests.nodemanager.fake_apiserver import make_pod
from tests.polling import wait_until
from tests.sidecar.harness import Pod, SidecarProcess
from tests.sidecar.timekeeper_process import TimekeeperProcess

TOKEN = "usage-end-to-end-token-team-a"
CORE = 50
MEMORY_UNITS = 15  # what the sidecar harness's pod holds
WORKLOAD_MS = 6000
PERIOD_SECONDS = 1.0


class _Pods:
    def __init__(self, pods: Sequence[Mapping[str, Any]]) -> None:
        self._pods = list(pods)

    def pending_pods(self, node_name: str) -> list[dict[str, Any]]:
        return [dict(pod) for pod in self._pods]


def granted_environment(tmp_path: Path) -> dict[str, str]:
    """What the node manager's Allocate hands the pod's GPU container."""
    manager = NodeManager(
        node_name="node-a",
        inventory=SimulatedInventory(1, 16 << 30),
        paths=Paths(tmp_path / "lib", tmp_path / "node-state", tmp_path / "checkpoint.json"),
        pod_source=_Pods([make_pod("train-0", [("train", CORE, MEMORY_UNITS)])]),
    )
    envs: dict[str, str] = {}
    for kind, size in ((Kind.CORE, CORE), (Kind.MEMORY, MEMORY_UNITS)):
        available = [device for device, _healthy in manager.devices(kind)]
        envs.update(manager.allocate(kind, manager.preferred(kind, available, [], size)).envs)
    return envs


def test_idle_share_reflects_what_the_container_really_used(
    hook_build: Path, tmp_path: Path
) -> None:
    granted = granted_environment(tmp_path)
    usage_dir = tmp_path / "pod-usage"  # the pod's emptyDir
    usage_dir.mkdir()
    # The container's paths, as the kubelet would mount them: the state folder, the hook, and
    # the usage folder at the path the node manager named (here a host folder).
    container_env = {
        **{k: v for k, v in granted.items() if k.startswith("GPUSHARE_")},
        "GPUSHARE_USAGE_DIR": str(usage_dir),
        "GPUSHARE_STUB_GPU": str(tmp_path / "gpu.model"),
        "GPUSHARE_LOG_LEVEL": "warn",
    }
    container_env.pop("GPUSHARE_STATE_DIR")
    assert granted["GPUSHARE_CORE_LIMIT"] == str(CORE) and "GPUSHARE_ALLOCATION_ID" in granted
    env = hook_environment(hook_build, tmp_path / "container-state", **container_env)

    timekeeper = TimekeeperProcess(tmp_path, tokens={TOKEN: "team-a"})
    timekeeper.start()
    try:
        pod = Pod(
            tmp_path,
            timekeeper.url,
            TOKEN,
            period_seconds=PERIOD_SECONDS,
            extra_env={"GPUSHARE_USAGE_DIR": str(usage_dir)},
        )
        with SidecarProcess(pod) as sidecar:
            workload = subprocess.run(
                [str(hook_build / "hooktool"), "pace", "1000", "10000", str(WORKLOAD_MS), "0"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert workload.returncode == 0, workload.stderr
            # the last interval holding the workload's end is delivered
            ended = len(timekeeper.held(pod.uid))
            wait_until(
                lambda: len(timekeeper.held(pod.uid)) >= ended + 2,
                timeout=15,
                what="the intervals after the workload",
            )
            assert sidecar.terminate_and_wait() == 0
        assert f"{granted['GPUSHARE_ALLOCATION_ID']}.json" in [p.name for p in usage_dir.iterdir()]
        start, end = parse_lines(workload.stdout)
        truth = (end["sm_ns"] - start["sm_ns"]) / (end["at_ns"] - start["at_ns"])
        expected_idle = 1 - truth / (CORE / 100)

        with sqlite3.connect(timekeeper.database) as db:
            measured = [
                row[0]
                for row in db.execute(
                    "SELECT sm_utilization FROM usage_reports WHERE pod_uid = ?"
                    " AND sm_utilization IS NOT NULL ORDER BY sequence",
                    (pod.uid,),
                )
            ]
        assert len(measured) >= WORKLOAD_MS / 1000 / PERIOD_SECONDS - 2, measured
        # each report of the run carries the share of the GPU the container used
        assert statistics.median(measured) == pytest.approx(truth, abs=0.02), (measured, truth)

        listed = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpushare",
                "usage",
                "--idle",
                "--threshold",
                "0.5",
                "--url",
                timekeeper.url,
                "-o",
                "json",
                "team-a",
            ],
            env=timekeeper.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (row,) = [p for p in json.loads(listed.stdout)["pods"] if p["podUid"] == pod.uid]
        assert row["idleShare"] == pytest.approx(expected_idle, abs=0.04), (row, truth)
        assert row["idleShare"] == pytest.approx(0.8, abs=0.06), (row, truth)
        # used GPU-hours: the measured allocation times the share of it that was used
        assert row["usedGpuHours"] == pytest.approx(
            row["measuredGpuHours"] * truth / (CORE / 100), rel=0.1
        )
    finally:
        timekeeper.kill()
