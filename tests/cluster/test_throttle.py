"""A namespace with `whenExhausted: throttle` crossing its budget (real timekeeper process,
real API server, node manager): its running pod is held at the floor, its client is told,
the timekeeper names it, nothing is killed, and the share comes back when the budget
refills."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodemanager.gputime.client import GpuTimeClient
from nodemanager.gputime.scheduler import Quota

from tests.cluster.controlplane import ControlPlane
from tests.cluster.gpunode import gpu_node, gpu_pod, start_pod
from tests.polling import wait_until
from tests.webhook.serving import serve_timekeeper

TOKEN = "lab-token-0123456789abcdef0123456789ab"


def _budgets(namespace: str, gpu_hours: float) -> str:
    return (
        f"namespaces:\n  {namespace}:\n    gpuHours: {gpu_hours}\n"
        "    whenExhausted: throttle\n    throttleToPercent: 20\n"
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_exhausted_namespace_is_throttled_then_restored(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    directory = tmp_path / "timekeeper"
    with serve_timekeeper(directory, _budgets(namespace, 0.01), {namespace: TOKEN}) as keeper:
        settings = {"timekeeper_url": keeper.url, "budget_poll_seconds": 0.2}
        with gpu_node(control_plane, **settings) as node:
            pod = gpu_pod("train", namespace, node.name, core=30, memory=4, annotations={})
            allocation = start_pod(control_plane, node, pod)
            server = node.daemon.gpu_time.server if node.daemon.gpu_time else None
            assert server is not None
            wait_until(lambda: server.quota(allocation) == Quota(0.3, 0.3), what="own share")
            socket = node.daemon.settings.state_dir / allocation / "gputime.sock"
            with GpuTimeClient(socket).connect() as client:
                # the sidecar's report: 30 % of a GPU for 3 minutes, 0.015 of 0.01 GPU-hours
                end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
                report = {
                    "podUid": "uid-train",
                    "pod": "train",
                    "namespace": namespace,
                    "sequence": 1,
                    "start": _rfc3339(end - timedelta(minutes=3)),
                    "end": _rfc3339(end),
                    "vcudaCore": 30,
                    "vcudaMemory": 4,
                }
                assert keeper.post_json("/api/v1/reports", report, TOKEN) in (200, 201)

                floor = Quota(0.06, 0.06, throttled=True)  # 20 % of a 30 % share
                wait_until(lambda: server.quota(allocation) == floor, what="throttled")

                def told(throttled: bool) -> bool:
                    client.poll()
                    return client.quota is not None and client.quota.throttled is throttled

                wait_until(lambda: told(True), what="the client told it is throttled")
                with urllib.request.urlopen(f"{keeper.url}/api/v1/namespaces/{namespace}") as r:
                    status = json.loads(r.read())
                assert (status["state"], status["throttledPods"]) == ("exhausted", ["train"])
                assert status["throttleToPercent"] == 20

                # the budget refills (here: the admin raises it; the file is re-read)
                (directory / "budgets.yaml").write_text(_budgets(namespace, 10))
                wait_until(
                    lambda: server.quota(allocation) == Quota(0.3, 0.3),
                    timeout=30,
                    what="the share restored",
                )
                wait_until(lambda: told(False), what="the client told it is restored")
            pods = control_plane.kubectl("get", "pod", "train", "-n", namespace, "-o", "json")
            assert "deletionTimestamp" not in json.loads(pods.stdout)["metadata"]
