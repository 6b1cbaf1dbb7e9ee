"""AdmissionReview (admission.k8s.io/v1) decoding and encoding.

Anything that is not a well-formed review of a Pod raises BadReview, which the entry layer
answers with a 400 and the reason.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhook.errors import BadReview

API_VERSION = "admission.k8s.io/v1"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of an AdmissionRequest the webhook uses."""

    uid: str
    operation: str
    namespace: str
    pod: Mapping[str, Any] | None
    """The object under review; None for DELETE and CONNECT."""
    old_pod: Mapping[str, Any] | None = None
    """The object before an UPDATE."""


@dataclass(frozen=True)
class Verdict:
    """The webhook's answer to one request."""

    allowed: bool
    message: str | None = None
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: tuple[str, ...] = ()
    decided_by_policy: bool = False
    """No budget state was known; the failure policy decided."""


def parse_review(body: bytes) -> AdmissionRequest:
    """Decode an AdmissionReview of a Pod; BadReview says what is wrong."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadReview(f"the body is not JSON: {err}") from err
    if not isinstance(review, dict):
        raise BadReview("the body must be a JSON object (an AdmissionReview)")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadReview(
            f"expected apiVersion {API_VERSION} and kind AdmissionReview,"
            f" got apiVersion={review.get('apiVersion')!r} kind={review.get('kind')!r}"
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("request must be an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid must be a non-empty string")
    operation = request.get("operation")
    if operation not in OPERATIONS:
        raise BadReview(f"request.operation must be one of {', '.join(OPERATIONS)}")
    kind = request.get("kind")
    # CONNECT reviews (exec, attach, port-forward) carry the options object, not the Pod.
    expected_kind = kind.get("kind") if operation == "CONNECT" and isinstance(kind, dict) else "Pod"
    if not isinstance(kind, dict) or (kind.get("group"), kind.get("kind")) != ("", expected_kind):
        raise BadReview(f"request.kind must be the core Pod kind, got {_brief(kind)}")
    pod = request.get("object")
    if operation in ("CREATE", "UPDATE"):
        if not isinstance(pod, dict):
            raise BadReview(f"request.object must be a Pod object for {operation}")
        if pod.get("kind", "Pod") != "Pod" or pod.get("apiVersion", "v1") != "v1":
            raise BadReview(
                f"request.object must be a v1 Pod, got apiVersion={pod.get('apiVersion')!r}"
                f" kind={pod.get('kind')!r}"
            )
    else:
        pod = None
    namespace = request.get("namespace")
    if namespace is None and pod is not None:
        metadata = pod.get("metadata")
        namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    if not isinstance(namespace, str) or not namespace:
        raise BadReview("request.namespace must be a non-empty string")
    old_pod = request.get("oldObject") if operation == "UPDATE" else None
    if old_pod is not None and not isinstance(old_pod, dict):
        raise BadReview("request.oldObject must be a Pod object for UPDATE")
    return AdmissionRequest(uid, operation, namespace, pod, old_pod)


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def encode_response(uid: str, verdict: Verdict) -> bytes:
    """The AdmissionReview answer as JSON: uid echoed, base64 JSONPatch when there is one."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {
            "code": 403,
            "reason": "Forbidden",
            "message": verdict.message or "pod rejected",
        }
    if verdict.patch:
        patch = orjson.dumps(verdict.patch)
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(patch).decode()
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return orjson.dumps(
        {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
    )
