"""Re-invocation (`reinvocationPolicy: IfNeeded`) sees the pod as the API server stored it:
defaulted after our patch, quantities in canonical form. The injected sidecar must still be
recognised as ours; a tampered one must still be refused."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.webhook.builders import apply_and_check, decode_patch, pod, review
from tests.webhook.test_mutation import SIDECAR_DIFFERS, mutate

SIDECAR = "gpushare-sidecar"


def _sidecar(subject: dict[str, Any]) -> dict[str, Any]:
    spec = subject["spec"]
    for item in spec.get("initContainers", []) + spec["containers"]:
        if item["name"] == SIDECAR:
            return item
    raise AssertionError("no sidecar")


def _defaulted(subject: dict[str, Any]) -> dict[str, Any]:
    """What the API server's defaulting adds to the injected parts (pkg/apis/core/v1)."""
    stored = copy.deepcopy(subject)
    for item in stored["spec"].get("initContainers", []) + stored["spec"]["containers"]:
        item.setdefault("terminationMessagePath", "/dev/termination-log")
    for volume in stored["spec"]["volumes"]:
        if "projected" in volume:
            volume["projected"].setdefault("defaultMode", 420)
    return stored


def _canonical(quantities: dict[str, str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def rewrite(subject: dict[str, Any]) -> dict[str, Any]:
        stored = _defaulted(subject)
        resources = _sidecar(stored)["resources"]
        for section in ("requests", "limits"):
            for name, value in resources[section].items():
                resources[section][name] = quantities.get(value, value)
        for volume in stored["spec"]["volumes"]:
            if "emptyDir" in volume:
                size = volume["emptyDir"]["sizeLimit"]
                volume["emptyDir"]["sizeLimit"] = quantities.get(size, size)
        return stored

    return rewrite


def _tampered(subject: dict[str, Any]) -> dict[str, Any]:
    stored = _defaulted(subject)
    _sidecar(stored)["terminationMessagePath"] = "/tmp/elsewhere"
    return stored


def _image_swapped(subject: dict[str, Any]) -> dict[str, Any]:
    stored = _defaulted(subject)
    _sidecar(stored)["image"] = "registry.example/not-gpushare:1"
    return stored


def _token_mode_changed(subject: dict[str, Any]) -> dict[str, Any]:
    stored = _defaulted(subject)
    for volume in stored["spec"]["volumes"]:
        if "projected" in volume:
            volume["projected"]["defaultMode"] = 0o777
    return stored


@pytest.mark.parametrize("mode", ["native", "classic"])
@pytest.mark.parametrize(
    ("settings", "store", "message"),
    [
        pytest.param({}, _defaulted, None, id="defaulted-by-the-api-server"),
        pytest.param(
            {"sidecar_cpu_request": "0.01", "sidecar_memory_limit": "67108864"},
            _canonical({"0.01": "10m", "67108864": "64Mi"}),
            None,
            id="quantities-in-canonical-form",
        ),
        pytest.param({}, _tampered, SIDECAR_DIFFERS, id="defaulted-field-changed-refused"),
        pytest.param({}, _image_swapped, SIDECAR_DIFFERS, id="image-swapped-refused"),
        pytest.param(
            {},
            _token_mode_changed,
            'pod rejected: volume "gpushare-token" is reserved for the gpushare accounting'
            " sidecar and differs from the one gpushare injects",
            id="token-volume-mode-changed-refused",
        ),
    ],
)
def test_reinvocation_after_storage(
    mode: str,
    settings: dict[str, str],
    store: Callable[[dict[str, Any]], dict[str, Any]],
    message: str | None,
) -> None:
    subject = pod(annotations={"a": "b"})
    first = apply_and_check(subject, decode_patch(mutate(subject, sidecar_mode=mode, **settings)))
    second = mutate(store(first), sidecar_mode=mode, **settings)
    uid = review(None)["request"]["uid"]
    if message is None:
        assert second["response"] == {"uid": uid, "allowed": True}
    else:
        assert second["response"]["allowed"] is False
        assert second["response"]["status"]["message"] == message
