"""What makes the sidecar gpushare's own, on re-invocation and at validation.

With `reinvocationPolicy: IfNeeded` the webhook sees the pod again after the API server and
other admission steps edited it: defaulting, the ServiceAccount plugin's token mount in every
container, LimitRange defaults, AlwaysPullImages, meshes and secret injectors. None of that
may make the injected sidecar "someone else's"; changes to what gpushare owns (place, image,
command, arguments, `GPUSHARE_*` environment, its mounts and volumes) are refused with the
field named. A sidecar or reserved volume that the pod's creator wrote is refused as such,
told apart by the `managedFields` the API server records from the request.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gpushare import __version__
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

SIDECAR = "gpushare-sidecar"
IMAGE = f"ghcr.io/gpushare/gpushare:{__version__}"
UID = review(None)["request"]["uid"]
Edit = Callable[[dict[str, Any]], None]


def _post(endpoint: str, subject: dict[str, Any], mode: str, **settings: Any) -> dict[str, Any]:
    app = create_app(
        Settings(timekeeper_url="http://tk:8080", sidecar_mode=mode, **settings),
        budgets=FakeBudgets(),
    )
    body = app.test_client().post(endpoint, json=review(subject)).json
    assert body is not None
    answer: dict[str, Any] = body["response"]
    return answer


def _containers(subject: dict[str, Any]) -> list[dict[str, Any]]:
    spec = subject["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _sidecar(subject: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in _containers(subject) if c["name"] == SIDECAR)


def _env(subject: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in _sidecar(subject)["env"] if e["name"] == name)


# What the API server and other admission steps do to every container ----------------------


def api_server_defaults(subject: dict[str, Any]) -> None:
    for item in _containers(subject):
        item.setdefault("terminationMessagePath", "/dev/termination-log")
        item.setdefault("terminationMessagePolicy", "File")
    for volume in subject["spec"]["volumes"]:
        if "projected" in volume:
            volume["projected"].setdefault("defaultMode", 420)


def canonical_quantities(subject: dict[str, Any]) -> None:
    api_server_defaults(subject)
    resources = _sidecar(subject)["resources"]
    resources["requests"]["cpu"] = "10m"  # sent as 0.01
    resources["limits"]["memory"] = "64Mi"  # sent as 67108864


def service_account_token(subject: dict[str, Any]) -> None:
    """The ServiceAccount plugin: a kube-api-access volume mounted into every container."""
    api_server_defaults(subject)
    subject["spec"]["volumes"].insert(
        0,
        {
            "name": "kube-api-access-x7k2p",
            "projected": {
                "defaultMode": 420,
                "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}],
            },
        },
    )
    for item in _containers(subject):
        item.setdefault("volumeMounts", []).append(
            {
                "name": "kube-api-access-x7k2p",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        )


def limit_range(subject: dict[str, Any]) -> None:
    service_account_token(subject)
    for item in _containers(subject):
        resources = item.setdefault("resources", {})
        resources.setdefault("limits", {})["ephemeral-storage"] = "1Gi"
        resources.setdefault("requests", {})["ephemeral-storage"] = "512Mi"


def always_pull_images(subject: dict[str, Any]) -> None:
    service_account_token(subject)
    for item in _containers(subject):
        item["imagePullPolicy"] = "Always"


def mesh(subject: dict[str, Any]) -> None:
    """A mesh or secret injector: environment, a mount and a hardening tweak everywhere."""
    service_account_token(subject)
    subject["spec"]["volumes"].append({"name": "mesh-certs", "emptyDir": {}})
    for item in _containers(subject):
        item.setdefault("env", []).append({"name": "MESH_ENDPOINT", "value": "127.0.0.1:15001"})
        item["volumeMounts"].append({"name": "mesh-certs", "mountPath": "/etc/mesh"})
        item.setdefault("securityContext", {})["seLinuxOptions"] = {"level": "s0:c1"}


@pytest.mark.parametrize("mode", ["native", "classic"])
@pytest.mark.parametrize(
    ("edit", "settings"),
    [
        pytest.param(api_server_defaults, {}, id="api-server-defaults"),
        pytest.param(
            canonical_quantities,
            {"sidecar_cpu_request": "0.01", "sidecar_memory_limit": "67108864"},
            id="quantities-in-canonical-form",
        ),
        pytest.param(service_account_token, {}, id="service-account-token-mounted"),
        pytest.param(limit_range, {}, id="limit-range-defaults"),
        pytest.param(always_pull_images, {}, id="always-pull-images"),
        pytest.param(mesh, {}, id="mesh-env-mount-security-context"),
    ],
)
def test_edits_by_other_admission_steps_keep_the_sidecar_ours(
    mode: str, edit: Edit, settings: dict[str, str]
) -> None:
    subject = as_requested(pod(annotations={"a": "b"}))
    first = _post("/mutate", subject, mode, **settings)
    stored = apply_and_check(subject, decode_patch({"response": first}))
    edit(stored)
    assert _post("/mutate", stored, mode, **settings) == {"uid": UID, "allowed": True}
    assert _post("/validate", stored, mode, **settings) == {"uid": UID, "allowed": True}


def _differs(text: str) -> str:
    return (
        f'pod rejected: container "{SIDECAR}" differs from the accounting sidecar gpushare'
        f" injects: {text}"
    )


def image_swapped(subject: dict[str, Any]) -> None:
    _sidecar(subject)["image"] = "registry.example/not-gpushare:1"


def command_changed(subject: dict[str, Any]) -> None:
    _sidecar(subject)["command"] = ["sleep", "infinity"]


def args_added(subject: dict[str, Any]) -> None:
    _sidecar(subject)["args"] = ["--help"]


def core_changed(subject: dict[str, Any]) -> None:
    _env(subject, "GPUSHARE_VCUDA_CORE")["value"] = "1"


def core_shadowed(subject: dict[str, Any]) -> None:
    _sidecar(subject)["env"].append({"name": "GPUSHARE_VCUDA_CORE", "value": "1"})


def url_missing(subject: dict[str, Any]) -> None:
    _sidecar(subject)["env"].remove(_env(subject, "GPUSHARE_TIMEKEEPER_URL"))


def env_added(subject: dict[str, Any]) -> None:
    _sidecar(subject)["env"].append({"name": "GPUSHARE_DRY_RUN", "value": "1"})


def preload_added(subject: dict[str, Any]) -> None:
    _sidecar(subject)["env"].append({"name": "LD_PRELOAD", "value": "/tmp/fake.so"})


def token_mount_replaced(subject: dict[str, Any]) -> None:
    subject["spec"]["volumes"].append({"name": "fake-token", "emptyDir": {}})
    for mount in _sidecar(subject)["volumeMounts"]:
        if mount["name"] == "gpushare-token":
            mount["name"] = "fake-token"


def restart_policy_changed(subject: dict[str, Any]) -> None:
    _sidecar(subject)["restartPolicy"] = "OnFailure"


def moved_to_containers(subject: dict[str, Any]) -> None:
    subject["spec"]["containers"].append(subject["spec"].pop("initContainers")[0])


def _volume(subject: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in subject["spec"]["volumes"] if v["name"] == name)


def token_audience_changed(subject: dict[str, Any]) -> None:
    source = _volume(subject, "gpushare-token")["projected"]["sources"][0]
    source["serviceAccountToken"]["audience"] = "somebody-else"


def token_mode_changed(subject: dict[str, Any]) -> None:
    _volume(subject, "gpushare-token")["projected"]["defaultMode"] = 0o777


VOLUME_DIFFERS = (
    'pod rejected: volume "gpushare-token" differs from the one gpushare injects for its'
    " accounting sidecar"
)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            image_swapped,
            _differs(f'image is "registry.example/not-gpushare:1"; gpushare injects "{IMAGE}"'),
            id="image-swapped",
        ),
        pytest.param(
            command_changed,
            _differs('command is ["sleep", "infinity"]; gpushare injects ["gpushare", "sidecar"]'),
            id="command-changed",
        ),
        pytest.param(
            args_added, _differs('args is ["--help"]; gpushare injects none'), id="args-added"
        ),
        pytest.param(
            core_changed,
            _differs('env GPUSHARE_VCUDA_CORE is "1"; gpushare injects "50"'),
            id="gpu-totals-changed-after-injection",
        ),
        pytest.param(
            core_shadowed,
            _differs('env GPUSHARE_VCUDA_CORE is "1"; gpushare injects "50"'),
            id="env-shadowed-by-a-later-entry",
        ),
        pytest.param(
            url_missing, _differs("env GPUSHARE_TIMEKEEPER_URL is missing"), id="env-removed"
        ),
        pytest.param(
            env_added,
            f'pod rejected: initContainer "{SIDECAR}" sets GPUSHARE_DRY_RUN; on GPU pods the node'
            " sets NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*, GPUSHARE_* (they carry the GPU"
            " isolation), so the pod spec may not",
            id="gpushare-env-added",
        ),
        pytest.param(
            preload_added,
            f'pod rejected: initContainer "{SIDECAR}" sets LD_PRELOAD; on GPU pods the node sets'
            " NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*, GPUSHARE_* (they carry the GPU"
            " isolation), so the pod spec may not",
            id="preload-added",
        ),
        pytest.param(
            token_mount_replaced,
            _differs(
                "the mount at /var/run/secrets/gpushare.io/serviceaccount is not only volume"
                " 'gpushare-token' read-only"
            ),
            id="token-mount-replaced",
        ),
        pytest.param(
            restart_policy_changed,
            _differs('restartPolicy is "OnFailure"; gpushare injects "Always"'),
            id="restart-policy-changed",
        ),
        pytest.param(
            moved_to_containers,
            _differs("it is in containers; gpushare injects it into initContainers"),
            id="moved-to-containers",
        ),
        pytest.param(token_audience_changed, VOLUME_DIFFERS, id="token-audience-changed"),
        pytest.param(token_mode_changed, VOLUME_DIFFERS, id="token-mode-changed"),
    ],
)
def test_changes_to_what_gpushare_owns_are_refused(edit: Edit, message: str) -> None:
    subject = as_requested(pod())
    stored = apply_and_check(
        subject, decode_patch({"response": _post("/mutate", subject, "native")})
    )
    service_account_token(stored)
    edit(stored)
    for endpoint in ("/mutate", "/validate"):
        answer = _post(endpoint, stored, "native")
        assert answer["allowed"] is False, endpoint
        assert answer["status"]["message"] == message, endpoint


RESERVED_CONTAINER = (
    f'container "{SIDECAR}" is reserved for the gpushare accounting sidecar, which gpushare'
    " injects itself; remove it from the pod (a copy of an admitted pod must leave it out)"
)


def _copy_of_admitted() -> dict[str, Any]:
    """An admitted pod, sent again as a new pod (`kubectl get -o yaml | kubectl create`)."""
    subject = pod()
    admitted = apply_and_check(
        subject, decode_patch({"response": _post("/mutate", subject, "native")})
    )
    fresh = copy.deepcopy(admitted)
    fresh["metadata"]["name"] = "job-2"
    return fresh


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        pytest.param(
            pod(
                container("train", limits=gpu(40, 4)),
                init=[container(SIDECAR, image="registry.example/fake:1", restartPolicy="Always")],
            ),
            RESERVED_CONTAINER,
            id="own-container-named-like-the-sidecar",
        ),
        pytest.param(
            pod(container("train", limits=gpu(40, 4)), container(SIDECAR, image=IMAGE)),
            RESERVED_CONTAINER,
            id="own-container-in-containers",
        ),
        pytest.param(
            _copy_of_admitted(),
            f'{RESERVED_CONTAINER}; volume "gpushare-token" is reserved for the gpushare'
            ' accounting sidecar; give the volume another name; volume "gpushare-spool" is'
            " reserved for the gpushare accounting sidecar; give the volume another name;"
            ' volume "gpushare-usage" is reserved for the gpushare accounting sidecar; give'
            " the volume another name",
            id="copy-of-an-admitted-pod-identical-sidecar",
        ),
        pytest.param(
            pod(volumes=[{"name": "gpushare-spool", "emptyDir": {}}]),
            'volume "gpushare-spool" is reserved for the gpushare accounting sidecar; give the'
            " volume another name",
            id="own-volume-with-a-reserved-name",
        ),
    ],
)
@pytest.mark.parametrize("endpoint", ["/mutate", "/validate"])
def test_what_the_creator_wrote_with_reserved_names_is_refused(
    endpoint: str, subject: dict[str, Any], message: str
) -> None:
    answer = _post(endpoint, as_requested(subject), "native")
    assert answer == {
        "uid": UID,
        "allowed": False,
        "status": {"code": 403, "reason": "Forbidden", "message": f"pod rejected: {message}"},
    }


def test_without_managed_fields_a_forged_sidecar_is_judged_by_what_gpushare_owns() -> None:
    """Reviews that do not come from an API server carry no managedFields: a container named
    like the sidecar is then ours only if every owned field is."""
    forged = pod(
        container("train", limits=gpu(40, 4)),
        init=[container(SIDECAR, image="registry.example/fake:1", restartPolicy="Always")],
    )
    answer = _post("/mutate", forged, "native")
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert message.startswith(
        _differs(f'image is "registry.example/fake:1"; gpushare injects "{IMAGE}"')
    )
    assert "env GPUSHARE_TIMEKEEPER_URL is missing" in message
