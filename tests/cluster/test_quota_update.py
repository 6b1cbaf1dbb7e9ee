"""`kubectl annotate` on a running pod changes its GPU time share (real API server): the
webhook refuses an invalid value with its reason, and a valid one reaches the node manager's
GPU time scheduler for that container, without restarting anything."""

from __future__ import annotations

import time
from pathlib import Path

from nodemanager.gputime.scheduler import Quota

from tests.cluster.controlplane import ControlPlane
from tests.cluster.gpunode import gpu_node, gpu_pod, start_pod, validating_webhook
from tests.polling import wait_until


def test_annotate_changes_the_share_of_a_running_pod(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with validating_webhook(control_plane, namespace, tmp_path), gpu_node(control_plane) as node:
        pod = gpu_pod(
            "train",
            namespace,
            node.name,
            core=30,
            memory=4,
            annotations={"gpushare.io/quota-request": "0.2", "gpushare.io/quota-limit": "0.6"},
        )
        allocation = start_pod(control_plane, node, pod)
        server = node.daemon.gpu_time.server if node.daemon.gpu_time else None
        assert server is not None
        wait_until(lambda: server.quota(allocation) == Quota(0.2, 0.6), what="quota from admission")

        refused = control_plane.kubectl(
            "annotate",
            "pod",
            "train",
            "-n",
            namespace,
            "--overwrite",
            "gpushare.io/quota-limit=1.5",
            check=False,
        )
        assert refused.returncode != 0
        assert (
            "pod rejected: annotation gpushare.io/quota-limit=1.5; it must be a fraction of"
            " GPU time with 0 <= quota-request <= quota-limit <= 1"
        ) in refused.stderr
        refused = control_plane.kubectl(
            "annotate",
            "pod",
            "train",
            "-n",
            namespace,
            "--overwrite",
            "gpushare.io/quota-request=0.5",
            check=False,
        )
        assert refused.returncode != 0
        assert "gpushare.io/quota-request=0.5 cannot be guaranteed" in refused.stderr
        assert server.quota(allocation) == Quota(0.2, 0.6), "a refused value changed nothing"

        annotated_at = time.monotonic()
        control_plane.kubectl(
            "annotate",
            "pod",
            "train",
            "-n",
            namespace,
            "--overwrite",
            "gpushare.io/quota-request=0",
            "gpushare.io/quota-limit=0.9",
        )
        wait_until(
            lambda: server.quota(allocation) == Quota(0.0, 0.9),
            timeout=10,
            what="the new quota in the scheduler",
        )
        changes = [at for name, at in server.quota_changes if name == allocation]
        print(f"annotate -> scheduler: {changes[-1] - annotated_at:.3f} s")
