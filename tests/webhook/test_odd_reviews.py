"""AdmissionReviews that are odd but legal: each gets a clear answer, never a 4xx/5xx for a
legal request, and a mutated pod is still checked two ways (jsonpatch, OpenAPI schema)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.webhook.builders import (
    CORE,
    MEMORY,
    apply_and_check,
    container,
    decode_patch,
    gpu,
    pod,
    review,
)

UID = review(None)["request"]["uid"]
SIDECAR = "gpushare-sidecar"


def _without(subject: dict[str, Any], *path: str) -> dict[str, Any]:
    changed = copy.deepcopy(subject)
    node = changed
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return changed


def _generate_name() -> dict[str, Any]:
    subject = _without(pod(), "metadata", "name")
    subject["metadata"]["generateName"] = "job-"
    return subject


def _with_claims() -> dict[str, Any]:
    subject = pod()
    subject["spec"]["containers"][0]["resources"]["claims"] = [{"name": "gpu"}]
    subject["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": "shared-gpu"}]
    return subject


def _with_ephemeral() -> dict[str, Any]:
    subject = pod()
    subject["spec"]["ephemeralContainers"] = [
        {"name": "debug", "image": "busybox", "targetContainerName": "train"}
    ]
    return subject


@pytest.mark.parametrize(
    ("subject", "request_namespace"),
    [
        pytest.param(_generate_name(), "team-a", id="generate-name-without-name"),
        pytest.param(
            _without(pod(), "metadata", "namespace"), "team-a", id="namespace-only-in-request"
        ),
        pytest.param(_with_claims(), "team-a", id="resource-claims-beside-vcuda"),
        pytest.param(_with_ephemeral(), "team-a", id="ephemeral-containers-ignored"),
        pytest.param(pod(container(limits=gpu("1e2", "8"))), "team-a", id="core-1e2-is-100"),
    ],
)
def test_odd_but_legal_creates_are_mutated(
    client: FlaskClient, subject: dict[str, Any], request_namespace: str
) -> None:
    reply = client.post("/mutate", json=review(subject, namespace=request_namespace))
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["response"]["allowed"] is True
    patched = _apply(subject, decode_patch(body))
    assert patched["metadata"]["annotations"]["gpushare.io/budget-state"] == "in-budget"
    names = [item["name"] for item in patched["spec"]["initContainers"]]
    assert names == [SIDECAR]


def _apply(subject: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    if "name" in subject["metadata"]:
        return apply_and_check(subject, ops)
    # generateName: the API server sets the name after admission; check with a stand-in.
    named = copy.deepcopy(subject)
    named["metadata"]["name"] = "job-x1y2z"
    return apply_and_check(named, ops)


def test_namespace_missing_in_the_request_comes_from_the_object(client: FlaskClient) -> None:
    body = review(pod(namespace="kube-system"))
    del body["request"]["namespace"]
    reply = client.post("/mutate", json=body)
    assert reply.get_json()["response"] == {"uid": UID, "allowed": True}


@pytest.mark.parametrize(
    ("quantity", "message"),
    [
        pytest.param("0.5", "asks tencent.com/vcuda-core=0.5; it must be a whole number", id="0.5"),
        pytest.param("50m", "asks tencent.com/vcuda-core=50m; it must be a whole number", id="50m"),
        pytest.param(
            "100Mi",
            "asks tencent.com/vcuda-core=100Mi; it is a count of units (1 % of a GPU each),"
            " not bytes: write a plain number",
            id="100Mi-bytes-suffix",
        ),
        pytest.param(
            "99999999999999999999999",
            "asks tencent.com/vcuda-core=99999999999999999999999; no node holds that much: a pod"
            " may ask at most 1600 (16 whole GPUs) in total",
            id="huge-integer",
        ),
        pytest.param(
            "\u0665\u0660",
            "asks tencent.com/vcuda-core=\u0665\u0660; it is not a valid quantity",
            id="non-ascii-digits",
        ),
    ],
)
def test_odd_core_quantities_are_refused_with_the_rule(
    client: FlaskClient, quantity: str, message: str
) -> None:
    reply = client.post("/validate", json=review(pod(container(limits=gpu(quantity, 8)))))
    answer = reply.get_json()["response"]
    assert reply.status_code == 200
    assert answer["allowed"] is False
    assert answer["status"]["message"] == f'pod rejected: container "train" {message}'


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        pytest.param(
            {"tencent.com/vcuda-core-limit": " 80"},
            "annotation tencent.com/vcuda-core-limit=' 80'; it must be an integer in [50, 100]",
            id="soft-limit-leading-space-quoted",
        ),
        pytest.param(
            {"tencent.com/vcuda-core-limit": "\u0668\u0660"},
            "annotation tencent.com/vcuda-core-limit=\u0668\u0660; it must be an integer in"
            " [50, 100]",
            id="soft-limit-non-ascii-digits",
        ),
        pytest.param(
            {"gpushare.io/quota-request": "0.5\n"},
            "annotation gpushare.io/quota-request='0.5\\n'; it must be a fraction of GPU time"
            " with 0 <= quota-request <= quota-limit <= 1",
            id="quota-trailing-newline-quoted",
        ),
        pytest.param(
            {"gpushare.io/sm-partition": "\u0665\u0660"},
            "annotation gpushare.io/sm-partition=\u0665\u0660; it must be an integer percent"
            " of the GPU's SMs in 1..100",
            id="sm-partition-non-ascii-digits",
        ),
    ],
)
def test_odd_annotations_are_refused_visibly(
    client: FlaskClient, annotations: dict[str, str], message: str
) -> None:
    reply = client.post("/validate", json=review(pod(annotations=annotations)))
    answer = reply.get_json()["response"]
    assert answer["allowed"] is False
    assert answer["status"]["message"] == f"pod rejected: {message}"


def _update(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    body = review(new, operation="UPDATE")
    body["request"]["oldObject"] = old
    return body


def _injected(client: FlaskClient) -> dict[str, Any]:
    subject = pod()
    return apply_and_check(
        subject, decode_patch(client.post("/mutate", json=review(subject)).get_json())
    )


@pytest.mark.parametrize("endpoint", ["/validate", "/mutate"])
@pytest.mark.parametrize(
    ("make_body", "expected"),
    [
        pytest.param(lambda injected: _update(pod(), pod()), True, id="update-without-sidecar"),
        pytest.param(
            lambda injected: _update(injected, injected), True, id="update-with-sidecar-unchanged"
        ),
        pytest.param(lambda injected: review(None, operation="DELETE") | {}, True, id="delete"),
        pytest.param(lambda injected: _connect("PodExecOptions", "exec"), True, id="connect-exec"),
        pytest.param(
            lambda injected: _connect("PodPortForwardOptions", "portforward"),
            True,
            id="connect-port-forward",
        ),
        pytest.param(
            lambda injected: (
                review(injected) | {"request": review(injected)["request"] | {"dryRun": True}}
            ),
            True,
            id="dry-run-create",
        ),
    ],
)
def test_other_operations_are_answered(
    client: FlaskClient, endpoint: str, make_body: Any, expected: bool
) -> None:
    body = make_body(_injected(client))
    reply = client.post(endpoint, json=body)
    assert reply.status_code == 200
    answer = reply.get_json()["response"]
    assert answer["allowed"] is expected
    if body["request"]["operation"] != "CREATE":
        assert "patch" not in answer  # only CREATE is ever mutated


def _connect(kind: str, subresource: str) -> dict[str, Any]:
    body = review({"apiVersion": "v1", "kind": kind, "command": ["sh"]}, operation="CONNECT")
    body["request"]["kind"] = {"group": "", "version": "v1", "kind": kind}
    body["request"]["subResource"] = subresource
    return body


def test_update_that_swaps_the_sidecar_image_is_refused(client: FlaskClient) -> None:
    injected = _injected(client)
    swapped = copy.deepcopy(injected)
    swapped["spec"]["initContainers"][0]["image"] = "registry.example/other:1"
    answer = client.post("/validate", json=_update(injected, swapped)).get_json()["response"]
    assert answer["allowed"] is False
    assert answer["status"]["message"].startswith(
        f'pod rejected: container "{SIDECAR}" may not change its image (from '
    )


def test_connect_of_something_that_is_no_pod_subresource_is_a_bad_request(
    client: FlaskClient,
) -> None:
    body = _connect("PodExecOptions", "exec")
    body["request"]["kind"]["group"] = "apps"
    reply = client.post("/validate", json=body)
    assert reply.status_code == 400
    assert "request.kind must be the core Pod kind" in reply.get_json()["message"]


def test_cpu_only_pod_with_core_and_memory_names_elsewhere_is_untouched(
    client: FlaskClient,
) -> None:
    subject = pod(container(limits={"cpu": "1", f"{CORE}-other": "5", f"x/{MEMORY}": "1"}))
    reply = client.post("/mutate", json=review(subject))
    assert reply.get_json()["response"] == {"uid": UID, "allowed": True}


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        pytest.param(
            "16Gi",
            'pod rejected: container "train" asks tencent.com/vcuda-memory=16Gi; it is a count'
            " of units (256 MiB each), not bytes: write a plain number",
            id="memory-in-bytes-refused",
        ),
        pytest.param(
            "0.5Ki",
            'pod rejected: container "train" asks tencent.com/vcuda-memory=0.5Ki; it is a count'
            " of units (256 MiB each), not bytes: write a plain number",
            id="memory-half-kibi-refused",
        ),
        pytest.param("1e1", None, id="memory-exponent-accepted"),
        pytest.param("1k", None, id="memory-decimal-suffix-accepted"),
    ],
)
def test_vcuda_memory_is_a_count_not_bytes(
    client: FlaskClient, memory: str, message: str | None
) -> None:
    answer = client.post("/mutate", json=review(pod(container(limits=gpu(50, memory))))).get_json()[
        "response"
    ]
    assert answer.get("status", {}).get("message") == message
    assert answer["allowed"] is (message is None)
