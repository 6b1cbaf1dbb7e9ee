"""Contracts between the webhook and the parts that read what it writes: the environment of
the injected sidecar goes through the sidecar's own settings parser, and the annotations go
through the node manager's own pod matching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nodemanager import pods
from nodemanager.devices import Kind
from nodemanager.manager import Paths

from gpushare.assignment import POD_GPU_ASSIGNMENT, Assignment, Share, format_assignment
from sidecar.settings import from_environ
from tests.webhook.builders import apply_and_check, container, decode_patch, gpu, pod, review
from tests.webhook.test_mutation import mutate

POD_UID = "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55"


def _resolved_env(sidecar: dict[str, Any], subject: dict[str, Any]) -> dict[str, str]:
    """The environment kubelet gives the container: literal values, downward-API fields."""
    fields = {
        "metadata.name": subject["metadata"]["name"],
        "metadata.namespace": subject["metadata"]["namespace"],
        "metadata.uid": POD_UID,
    }
    env = {}
    for variable in sidecar["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            env[variable["name"]] = fields[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.mark.parametrize(
    ("settings", "subject", "expected"),
    [
        pytest.param(
            {},
            pod(container(limits=gpu(50, 8))),
            ("http://timekeeper.gpushare-system.svc:8080", 50, 8, 15.0),
            id="native-defaults",
        ),
        pytest.param(
            {
                "sidecar_mode": "classic",
                "sidecar_timekeeper_url": "https://tk.example:8443/gpushare/",
                "sidecar_report_interval_seconds": 60,
            },
            pod(
                container("a", limits=gpu(30, 4)),
                container("b", limits={"tencent.com/vcuda-core": "200"}),
            ),
            ("https://tk.example:8443/gpushare", 230, 4, 60.0),
            id="classic-https-prefix-two-containers",
        ),
    ],
)
def test_injected_environment_is_what_the_sidecar_parses(
    settings: dict[str, Any], subject: dict[str, Any], expected: tuple[str, int, int, float]
) -> None:
    patched = apply_and_check(subject, decode_patch(mutate(subject, **settings)))
    containers = patched["spec"].get("initContainers", []) + patched["spec"]["containers"]
    sidecar = next(item for item in containers if item["name"] == "gpushare-sidecar")
    parsed = from_environ(_resolved_env(sidecar, patched))
    assert (
        parsed.timekeeper_url,
        parsed.vcuda_core,
        parsed.vcuda_memory,
        parsed.report_interval_seconds,
    ) == expected
    assert (parsed.pod_name, parsed.pod_namespace, parsed.pod_uid) == ("job-1", "team-a", POD_UID)
    mounts = {mount["mountPath"] for mount in sidecar["volumeMounts"]}
    assert parsed.spool_dir in mounts  # the read-only root leaves only the spool writable
    assert parsed.token_file.rsplit("/", 1)[0] in mounts
    # the usage folder: where the sidecar reads is where the GPU containers have the pod's
    # folder and where the node manager tells the hook to write
    (usage,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == parsed.usage_dir]
    assert usage == {"name": "gpushare-usage", "mountPath": parsed.usage_dir, "readOnly": True}
    for item in containers:
        if "tencent.com/vcuda-core" in item.get("resources", {}).get("limits", {}):
            assert {"name": "gpushare-usage", "mountPath": parsed.usage_dir} in item["volumeMounts"]
    assert Paths(Path("lib"), Path("state"), Path("checkpoint")).container_usage_dir == (
        parsed.usage_dir
    )


@pytest.mark.parametrize(
    ("annotations", "expected_soft_limit"),
    [
        pytest.param({"tencent.com/vcuda-core-limit": "80"}, 80, id="burst-80"),
        pytest.param({"tencent.com/vcuda-core-limit": "050"}, 50, id="burst-leading-zero"),
        pytest.param({}, 30, id="no-burst"),
    ],
)
def test_admitted_burst_limit_is_what_the_node_manager_hands_out(
    client: Any, annotations: dict[str, str], expected_soft_limit: int
) -> None:
    """Whatever the webhook admits as a burst limit, the node manager reads the same way."""
    subject = pod(container(limits=gpu(30, 4)), annotations=annotations)
    body = client.post("/mutate", json=review(subject)).get_json()
    assert body["response"]["allowed"] is True
    patched = apply_and_check(subject, decode_patch(body))
    patched["metadata"]["uid"] = POD_UID
    patched["status"] = {"phase": "Pending"}
    # as the extender records it at bind
    patched["metadata"]["annotations"][POD_GPU_ASSIGNMENT] = format_assignment(
        Assignment(node="n1", containers={"train": (Share("GPU-0", 30, 4),)})
    )
    candidates = pods.pending_containers([patched], "n1")
    found = pods.match(candidates, Kind.CORE, 30, set(), core_limit=30)
    assert found.candidate is not None
    assert (found.candidate.container, found.soft_limit) == ("train", expected_soft_limit)
