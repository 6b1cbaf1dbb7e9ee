"""The accounting sidecar and its volumes, as the webhook injects them (pure logic).

The sidecar reads exactly this environment (a contract with the sidecar part); it holds no
GPU resources itself and runs with a restrictive securityContext.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpushare import annotations as keys
from gpushare import quantities
from webhook.settings import Settings
from webhook.validation import PodGpuTotals

SIDECAR_NAME = "gpushare-sidecar"
SIDECAR_COMMAND = ("gpushare", "sidecar")
TOKEN_VOLUME = "gpushare-token"
TOKEN_DIR = "/var/run/secrets/gpushare.io/serviceaccount"
TOKEN_FILE = f"{TOKEN_DIR}/token"
SPOOL_VOLUME = "gpushare-spool"
SPOOL_DIR = "/var/lib/gpushare/spool"


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
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.sidecar_mode == "native":
        container["restartPolicy"] = "Always"
    return container


def sidecar_volumes(settings: Settings) -> list[dict[str, Any]]:
    """The projected ServiceAccount token (audience: the timekeeper) and the spool."""
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
    ]


def find_sidecar(pod: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """Where the container named like the sidecar is (`initContainers` or `containers`)."""
    spec = pod.get("spec", {})
    for field in ("initContainers", "containers"):
        for container in spec.get(field) or []:
            if isinstance(container, dict) and container.get("name") == SIDECAR_NAME:
                return field, container
    return None


def sidecar_problem(
    found: tuple[str, Mapping[str, Any]],
    pod: Mapping[str, Any],
    settings: Settings,
    totals: PodGpuTotals,
) -> str | None:
    """Why the sidecar already in the pod is not the one gpushare injects (None: it is).

    Only the exact container and volumes count as injected, so that a pod cannot skip
    accounting by bringing its own `gpushare-sidecar` or by setting the annotation.
    """
    field, container = found
    expected_field = "initContainers" if settings.sidecar_mode == "native" else "containers"
    expected = sidecar_container(settings, totals)
    if field != expected_field or _as_stored(container) != _as_stored(expected):
        return (
            f'container "{SIDECAR_NAME}" is reserved for the gpushare accounting sidecar and'
            " differs from the one gpushare injects"
        )
    volumes = {
        volume.get("name"): volume
        for volume in pod.get("spec", {}).get("volumes") or []
        if isinstance(volume, dict)
    }
    for volume in sidecar_volumes(settings):
        if _as_stored(volumes.get(volume["name"])) != _as_stored(volume):
            return (
                f'volume "{volume["name"]}" is reserved for the gpushare accounting sidecar and'
                " differs from the one gpushare injects"
            )
    return None


# Fields the API server fills in with these values when it defaults a pod (it defaults the
# patched object after every mutating webhook, so a re-invocation sees them).
_DEFAULTED: dict[str, object] = {"terminationMessagePath": "/dev/termination-log"}
_DEFAULTED_PROJECTED: dict[str, object] = {"defaultMode": 0o644}
# Quantities come back in canonical form ("0.1" as "100m").
_QUANTITY_KEYS = frozenset(("cpu", "memory", "sizeLimit"))


def _as_stored(item: Any) -> Any:
    """The container or volume with the API server's defaults and quantity spelling taken
    out, so that the injected one compares equal to itself after a round through storage."""
    if isinstance(item, list):
        return [_as_stored(value) for value in item]
    if not isinstance(item, dict):
        return item
    result: dict[str, Any] = {}
    for key, value in item.items():
        if _DEFAULTED.get(key, _NOTHING) == value:
            continue
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
