"""The pod's usage folder: an `emptyDir` the webhook mounts read-write in every container that
holds GPU time (the vGPU hook writes its usage file there; the node manager names the path in
`GPUSHARE_USAGE_DIR`) and read-only in the sidecar. Recognised as gpushare's own on
re-invocation; nothing else may sit at or under the folder's path in a GPU container."""

from __future__ import annotations

from typing import Any

import pytest

from gpushare.resources import USAGE_DIR
from tests.webhook.builders import (
    FakeBudgets,
    apply_and_check,
    as_requested,
    container,
    decode_patch,
    gpu,
    pod,
    review,
)
from webhook.app import create_app
from webhook.settings import Settings

USAGE_MOUNT = {"name": "gpushare-usage", "mountPath": USAGE_DIR}


def _post(endpoint: str, subject: dict[str, Any], mode: str = "native") -> dict[str, Any]:
    app = create_app(
        Settings(timekeeper_url="http://tk:8080", sidecar_mode=mode), budgets=FakeBudgets()
    )
    body = app.test_client().post(endpoint, json=review(subject)).json
    assert body is not None
    answer: dict[str, Any] = body["response"]
    return answer


def _admit(subject: dict[str, Any], mode: str = "native") -> dict[str, Any]:
    answer = _post("/mutate", subject, mode)
    assert answer["allowed"], answer
    return apply_and_check(subject, decode_patch({"response": answer}))


def _named(stored: dict[str, Any], name: str) -> dict[str, Any]:
    spec = stored["spec"]
    return next(
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    )


def _mixed_pod() -> dict[str, Any]:
    # a GPU init container, a GPU container with mounts of its own, a CPU-only container
    return as_requested(
        pod(
            container(
                "train",
                limits=gpu(40, 4),
                volumeMounts=[{"name": "data", "mountPath": "/data"}],
            ),
            container("logs", limits={"cpu": "1"}),
            init=[container("warmup", limits=gpu(40, 4))],
            volumes=[{"name": "data", "emptyDir": {}}],
        )
    )


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_every_gpu_container_gets_the_folder_read_write_and_the_sidecar_read_only(
    mode: str,
) -> None:
    stored = _admit(_mixed_pod(), mode)
    assert _named(stored, "train")["volumeMounts"] == [
        {"name": "data", "mountPath": "/data"},
        USAGE_MOUNT,
    ]
    assert _named(stored, "warmup")["volumeMounts"] == [USAGE_MOUNT]
    assert "volumeMounts" not in _named(stored, "logs")
    sidecar = _named(stored, "gpushare-sidecar")
    assert {**USAGE_MOUNT, "readOnly": True} in sidecar["volumeMounts"]
    assert {"name": "GPUSHARE_USAGE_DIR", "value": USAGE_DIR} in sidecar["env"]
    assert {"name": "gpushare-usage", "emptyDir": {"sizeLimit": "1Mi"}} in stored["spec"]["volumes"]
    # re-invocation and validation: the folder is recognised as gpushare's, nothing changes
    again = _post("/mutate", stored, mode)
    assert again["allowed"] and "patch" not in again, again
    assert _post("/validate", stored, mode)["allowed"]


def _mount_elsewhere(stored: dict[str, Any]) -> None:
    stored["spec"]["volumes"].append({"name": "mine", "emptyDir": {}})
    for mount in _named(stored, "train")["volumeMounts"]:
        if mount["name"] == "gpushare-usage":
            mount["name"] = "mine"


def _made_read_only(stored: dict[str, Any]) -> None:
    next(m for m in _named(stored, "train")["volumeMounts"] if m["name"] == "gpushare-usage")[
        "readOnly"
    ] = True


def _removed(stored: dict[str, Any]) -> None:
    mounts = _named(stored, "train")["volumeMounts"]
    mounts.remove(USAGE_MOUNT)


RESERVED = (
    'container "train" mounts something at or under /var/run/gpushare-usage; that folder is'
    " reserved for the pod's usage folder (volume 'gpushare-usage', which gpushare mounts"
    " there for the GPU's measured use): use another path"
)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(_mount_elsewhere, RESERVED, id="another-volume-at-the-path"),
        pytest.param(_made_read_only, RESERVED, id="made-read-only"),
        pytest.param(
            _removed,
            'container "train" lacks the usage folder gpushare mounts in GPU containers'
            " (volume 'gpushare-usage' at /var/run/gpushare-usage)",
            id="removed-after-mutation",
        ),
    ],
)
def test_another_step_changing_the_folder_is_refused_at_validation(edit: Any, message: str) -> None:
    stored = _admit(_mixed_pod())
    edit(stored)
    answer = _post("/validate", stored)
    assert not answer["allowed"]
    assert answer["status"]["message"] == f"pod rejected: {message}"


@pytest.mark.parametrize(
    "mount",
    [
        pytest.param({"name": "data", "mountPath": USAGE_DIR}, id="at-the-path"),
        pytest.param({"name": "data", "mountPath": USAGE_DIR + "/"}, id="trailing-slash"),
        pytest.param(
            {"name": "data", "mountPath": f"{USAGE_DIR}/alloc.json", "subPath": "fake.json"},
            id="a-file-inside",
        ),
    ],
)
def test_a_user_mount_at_or_under_the_folder_is_refused(mount: dict[str, Any]) -> None:
    subject = as_requested(
        pod(
            container("train", limits=gpu(40, 4), volumeMounts=[mount]),
            volumes=[{"name": "data", "emptyDir": {}}],
        )
    )
    answer = _post("/mutate", subject)
    assert not answer["allowed"]
    assert answer["status"]["message"] == f"pod rejected: {RESERVED}"


def test_a_user_written_usage_volume_is_refused() -> None:
    subject = as_requested(pod(volumes=[{"name": "gpushare-usage", "emptyDir": {}}]))
    answer = _post("/mutate", subject)
    assert not answer["allowed"]
    assert 'volume "gpushare-usage" is reserved' in answer["status"]["message"]


def test_a_user_cannot_point_the_hook_elsewhere() -> None:
    # the node sets GPUSHARE_USAGE_DIR in GPU containers; a pod spec may not
    subject = as_requested(
        pod(
            container(
                "train",
                limits=gpu(40, 4),
                env=[{"name": "GPUSHARE_USAGE_DIR", "value": "/tmp/elsewhere"}],
            )
        )
    )
    answer = _post("/mutate", subject)
    assert not answer["allowed"]
    assert 'container "train" sets GPUSHARE_USAGE_DIR' in answer["status"]["message"]
