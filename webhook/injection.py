"""The accounting sidecar and its volumes, as the webhook injects them (pure logic).

The sidecar reads exactly this environment (a contract with the sidecar part); it holds no
GPU resources itself and runs with a restrictive securityContext.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gpushare import annotations as keys
from gpushare import quantities
from gpushare.resources import USAGE_DIR
from webhook import patches
from webhook.settings import Settings
from webhook.validation import ContainerRef, PodGpuTotals, PodReport

SIDECAR_NAME = "gpushare-sidecar"
SIDECAR_COMMAND = ("gpushare", "sidecar")
TOKEN_VOLUME = "gpushare-token"
TOKEN_DIR = "/var/run/secrets/gpushare.io/serviceaccount"
TOKEN_FILE = f"{TOKEN_DIR}/token"
SPOOL_VOLUME = "gpushare-spool"
SPOOL_DIR = "/var/lib/gpushare/spool"
USAGE_VOLUME = "gpushare-usage"
USAGE_SIZE_LIMIT = "1Mi"


SIDECAR_ENV_NAMES = (
    "GPUSHARE_TIMEKEEPER_URL",
    "GPUSHARE_TOKEN_FILE",
    "GPUSHARE_POD_NAME",
    "GPUSHARE_POD_NAMESPACE",
    "GPUSHARE_POD_UID",
    "GPUSHARE_VCUDA_CORE",
    "GPUSHARE_VCUDA_MEMORY",
    "GPUSHARE_REPORT_INTERVAL_SECONDS",
    "GPUSHARE_SPOOL_DIR",
    "GPUSHARE_USAGE_DIR",
)
"""The sidecar's environment (its contract with the sidecar part), in the order injected."""


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def sidecar_container(settings: Settings, totals: PodGpuTotals) -> dict[str, Any]:
    """The sidecar container; with `restartPolicy: Always` in native mode."""
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": settings.sidecar_image,
        "imagePullPolicy": settings.sidecar_image_pull_policy,
        "command": list(SIDECAR_COMMAND),
        "env": [
            {"name": "GPUSHARE_TIMEKEEPER_URL", "value": settings.effective_sidecar_timekeeper_url},
            {"name": "GPUSHARE_TOKEN_FILE", "value": TOKEN_FILE},
            _field_env("GPUSHARE_POD_NAME", "metadata.name"),
            _field_env("GPUSHARE_POD_NAMESPACE", "metadata.namespace"),
            _field_env("GPUSHARE_POD_UID", "metadata.uid"),
            {"name": "GPUSHARE_VCUDA_CORE", "value": str(totals.core_units)},
            {"name": "GPUSHARE_VCUDA_MEMORY", "value": str(totals.memory_units)},
            {
                "name": "GPUSHARE_REPORT_INTERVAL_SECONDS",
                "value": str(settings.sidecar_report_interval_seconds),
            },
            {"name": "GPUSHARE_SPOOL_DIR", "value": SPOOL_DIR},
            {"name": "GPUSHARE_USAGE_DIR", "value": USAGE_DIR},
        ],
        "resources": {
            "requests": {
                "cpu": settings.sidecar_cpu_request,
                "memory": settings.sidecar_memory_request,
            },
            "limits": {"cpu": settings.sidecar_cpu_limit, "memory": settings.sidecar_memory_limit},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.sidecar_run_as_user,
            "runAsGroup": settings.sidecar_run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": SPOOL_VOLUME, "mountPath": SPOOL_DIR},
            {"name": USAGE_VOLUME, "mountPath": USAGE_DIR, "readOnly": True},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.sidecar_mode == "native":
        container["restartPolicy"] = "Always"
    return container


def sidecar_volumes(settings: Settings) -> list[dict[str, Any]]:
    """The projected ServiceAccount token (audience: the timekeeper), the spool, and the
    pod's usage folder (the vGPU hook's usage files, read by the sidecar)."""
    return [
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": keys.TIMEKEEPER_AUDIENCE,
                            "expirationSeconds": settings.sidecar_token_expiration_seconds,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {"name": SPOOL_VOLUME, "emptyDir": {"sizeLimit": settings.sidecar_spool_size_limit}},
        {"name": USAGE_VOLUME, "emptyDir": {"sizeLimit": USAGE_SIZE_LIMIT}},
    ]


def find_sidecar(pod: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """Where the container named like the sidecar is (`initContainers` or `containers`)."""
    spec = pod.get("spec", {})
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            if isinstance(container, dict) and container.get("name") == SIDECAR_NAME:
                return field, container
    return None


RESERVED_VOLUMES = (TOKEN_VOLUME, SPOOL_VOLUME, USAGE_VOLUME)


def written_by_user(pod: Mapping[str, Any]) -> list[str]:
    """The reserved containers and volumes (`gpushare-sidecar`, `gpushare-token`,
    `gpushare-spool`, `gpushare-usage`) that the pod's creator wrote, as refusal reasons.

    On CREATE the API server records in `metadata.managedFields` every field of the object
    as the client sent it, before any admission step runs, and recomputes that record
    whatever the client puts there. What gpushare (or any other admission step) adds later is
    not in it, so a reserved name found there was written by the user: a pod that brings its
    own "sidecar" to skip accounting is refused, while the real one, which other admission
    steps may since have edited, is never mistaken for it.
    """
    owned: set[tuple[str, str]] = set()
    metadata = pod.get("metadata")
    entries = metadata.get("managedFields") if isinstance(metadata, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        fields = entry.get("fieldsV1") if isinstance(entry, dict) else None
        spec = fields.get("f:spec") if isinstance(fields, dict) else None
        if not isinstance(spec, dict):
            continue
        for field in ("f:initContainers", "f:containers", "f:volumes"):
            for key in spec.get(field) or {}:
                owned.add((field, _list_key_name(key)))
    problems = [
        f'container "{SIDECAR_NAME}" is reserved for the gpushare accounting sidecar, which'
        " gpushare injects itself; remove it from the pod (a copy of an admitted pod must"
        " leave it out)"
        for field in ("f:initContainers", "f:containers")
        if (field, SIDECAR_NAME) in owned
    ][:1]
    problems += [
        f'volume "{name}" is reserved for the gpushare accounting sidecar; give the volume'
        " another name"
        for name in RESERVED_VOLUMES
        if ("f:volumes", name) in owned
    ]
    return problems


USAGE_MOUNT: dict[str, Any] = {"name": USAGE_VOLUME, "mountPath": USAGE_DIR}
"""The usage folder as every GPU container mounts it (read-write: the hook writes there)."""


def _gpu_containers(report: PodReport) -> set[tuple[str, str]]:
    """(field, name) of the containers that hold GPU time: the node hands each of them the
    hook and `GPUSHARE_USAGE_DIR`."""
    field = {"initContainer": "initContainers", "container": "containers"}
    return {
        (field[request.container.kind], request.container.name)
        for request in report.requests
        if request.core_units > 0
    }


def _under_usage_dir(mount: Mapping[str, Any]) -> bool:
    path = mount.get("mountPath")
    if not isinstance(path, str):
        return False
    path = path.rstrip("/")
    return path == USAGE_DIR or path.startswith(USAGE_DIR + "/")


def _usage_mount_state(container: Mapping[str, Any]) -> str:
    """`absent`, `ours`, or `other` (something else mounted at or under the usage folder)."""
    mounts = [m for m in container.get("volumeMounts") or [] if isinstance(m, dict)]
    there = [_as_mount(m) for m in mounts if _under_usage_dir(m)]
    if not there:
        return "absent"
    return "ours" if there == [_as_mount(USAGE_MOUNT)] else "other"


def usage_mounts(pod: Mapping[str, Any], report: PodReport) -> tuple[list[str], list[Any]]:
    """The usage folder in every GPU container: refusal reasons where a container mounts
    something else at or under it, and the patch operations that add it where it is missing.

    A mount that is exactly gpushare's (volume `gpushare-usage`, read-write, no subPath) is
    kept as it is: on a re-invocation it is the one added before, and nobody else can bring
    the volume it names (a user-written `gpushare-usage` volume is refused). Operations
    address containers by their index in the pod as sent, so they go before any insertion.
    """
    gpu = _gpu_containers(report)
    problems: list[str] = []
    ops: list[Any] = []
    spec = pod.get("spec", {})
    for field in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(field) or []):
            if not isinstance(container, dict) or (field, container.get("name")) not in gpu:
                continue
            state = _usage_mount_state(container)
            if state == "other":
                ref = ContainerRef(
                    "initContainer" if field == "initContainers" else "container",
                    str(container.get("name")),
                    False,
                )
                problems.append(
                    f"{ref.describe()} mounts something at or under {USAGE_DIR}; that folder"
                    f" is reserved for the pod's usage folder (volume {USAGE_VOLUME!r}, which"
                    " gpushare mounts there for the GPU's measured use): use another path"
                )
            elif state == "absent":
                where = patches.pointer("spec", field, str(index), "volumeMounts")
                if container.get("volumeMounts"):
                    ops.append({"op": "add", "path": where + "/-", "value": dict(USAGE_MOUNT)})
                else:
                    ops.append({"op": "add", "path": where, "value": [dict(USAGE_MOUNT)]})
    return problems, ops


def missing_usage_mounts(pod: Mapping[str, Any], report: PodReport) -> list[str]:
    """Why the pod, as every mutating step left it, lacks gpushare's usage folder in a GPU
    container (validation after mutation: every GPU container must hold exactly it)."""
    problems, ops = usage_mounts(pod, report)
    for op in ops:
        field, index = op["path"].split("/")[2:4]
        name = pod["spec"][field][int(index)].get("name")
        problems.append(
            f'{"initContainer" if field == "initContainers" else "container"} "{name}" lacks'
            f" the usage folder gpushare mounts in GPU containers (volume {USAGE_VOLUME!r} at"
            f" {USAGE_DIR})"
        )
    return problems


def _list_key_name(key: object) -> str:
    """`k:{"name":"x"}` (a list item keyed by its name, in managedFields) → `x`."""
    if not isinstance(key, str) or not key.startswith("k:"):
        return ""
    try:
        item = json.loads(key[2:])
    except ValueError:
        return ""
    name = item.get("name") if isinstance(item, dict) else None
    return name if isinstance(name, str) else ""


def sidecar_problems(
    found: tuple[str, Mapping[str, Any]],
    pod: Mapping[str, Any],
    settings: Settings,
    totals: PodGpuTotals,
) -> list[str]:
    """How the sidecar in the pod differs from the one gpushare injects, in the fields that
    decide what runs and what it reports (empty: it is ours).

    gpushare owns the sidecar's place, image, command and arguments, its `GPUSHARE_*`
    environment, the mounts of its two volumes, and those volumes. Everything else may be
    changed by other admission steps without making it someone else's sidecar: the
    ServiceAccount plugin mounts the API token into every container, LimitRange fills in
    resources, AlwaysPullImages sets the pull policy, meshes and secret injectors add
    environment and mounts.
    """
    field, container = found
    expected = sidecar_container(settings, totals)
    expected_field = "initContainers" if settings.sidecar_mode == "native" else "containers"
    differences: list[str] = []
    if field != expected_field:
        differences.append(f"it is in {field}; gpushare injects it into {expected_field}")
    if container.get("restartPolicy") != expected.get("restartPolicy"):
        differences.append(
            f"restartPolicy is {_shown(container.get('restartPolicy'))};"
            f" gpushare injects {_shown(expected.get('restartPolicy'))}"
        )
    for key in ("image", "command"):
        if container.get(key) != expected[key]:
            differences.append(
                f"{key} is {_shown(container.get(key))}; gpushare injects {_shown(expected[key])}"
            )
    if container.get("args"):
        differences.append(f"args is {_shown(container.get('args'))}; gpushare injects none")
    differences += _env_differences(container, expected)
    differences += _mount_differences(container, expected)
    problems = [
        f'container "{SIDECAR_NAME}" differs from the accounting sidecar gpushare injects: {text}'
        for text in differences
    ]
    volumes = {
        volume.get("name"): volume
        for volume in pod.get("spec", {}).get("volumes") or []
        if isinstance(volume, dict)
    }
    for volume in sidecar_volumes(settings):
        if _as_stored(volumes.get(volume["name"])) != _as_stored(volume):
            problems.append(
                f'volume "{volume["name"]}" differs from the one gpushare injects for its'
                " accounting sidecar"
            )
    return problems


def _env_differences(container: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    # Other GPUSHARE_* variables are refused for every container (webhook.isolation).
    wanted = {entry["name"]: entry for entry in expected["env"]}
    seen: dict[str, Any] = {}
    for entry in container.get("env") or []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name.startswith("GPUSHARE_"):
            seen[name] = entry  # of two entries with one name, the container gets the last
    differences = []
    for name, entry in wanted.items():
        if name not in seen:
            differences.append(f"env {name} is missing")
        elif seen[name] != entry:
            differences.append(
                f"env {name} is {_shown(_env_value(seen[name]))};"
                f" gpushare injects {_shown(_env_value(entry))}"
            )
    return differences


def _env_value(entry: Mapping[str, Any]) -> object:
    return entry.get("value", entry.get("valueFrom"))


def _mount_differences(container: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    mounts = [m for m in container.get("volumeMounts") or [] if isinstance(m, dict)]
    differences = []
    for wanted in expected["volumeMounts"]:
        at_path = [m for m in mounts if m.get("mountPath") == wanted["mountPath"]]
        if [_as_mount(m) for m in at_path] != [_as_mount(wanted)]:
            differences.append(
                f"the mount at {wanted['mountPath']} is not only volume {wanted['name']!r}"
                f"{' read-only' if wanted.get('readOnly') else ''}"
            )
    return differences


def _as_mount(mount: Mapping[str, Any]) -> tuple[object, ...]:
    return (
        mount.get("name"),
        mount.get("mountPath"),
        bool(mount.get("readOnly")),
        mount.get("subPath") or "",
        mount.get("subPathExpr") or "",
    )


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 120 else text[:117] + "..."


# Fields the API server fills in with these values when it defaults a pod (it defaults the
# patched object after every mutating webhook, so a re-invocation sees them).
_DEFAULTED_PROJECTED: dict[str, object] = {"defaultMode": 0o644}
# Quantities come back in canonical form ("0.1" as "100m").
_QUANTITY_KEYS = frozenset(("cpu", "memory", "sizeLimit"))


def _as_stored(item: Any) -> Any:
    """The volume with the API server's defaults and quantity spelling taken out, so that the
    injected one compares equal to itself after a round through storage."""
    if isinstance(item, list):
        return [_as_stored(value) for value in item]
    if not isinstance(item, dict):
        return item
    result: dict[str, Any] = {}
    for key, value in item.items():
        if key == "projected" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if _DEFAULTED_PROJECTED.get(k, _NOTHING) != v}
        if key in _QUANTITY_KEYS and isinstance(value, str | int | float):
            try:
                result[key] = quantities.parse(value)
                continue
            except quantities.QuantityError:
                pass
        result[key] = _as_stored(value)
    return result


_NOTHING = object()


def update_problem(old_pod: Mapping[str, Any], pod: Mapping[str, Any]) -> str | None:
    """The sidecar's image is the one mutable part of it; an UPDATE may not swap it."""
    before, after = find_sidecar(old_pod), find_sidecar(pod)
    if before is None or after is None:
        return None
    old_image, new_image = before[1].get("image"), after[1].get("image")
    if old_image == new_image:
        return None
    return (
        f'container "{SIDECAR_NAME}" may not change its image (from {old_image!r} to {new_image!r})'
    )
