"""/validate, probes, metrics, and malformed input: always a 4xx with a message, never a 5xx."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.webhook.builders import FakeBudgets, admitted, container, gpu, pod, review
from webhook.app import create_app
from webhook.settings import Settings

UID = review(None)["request"]["uid"]


@pytest.mark.parametrize(
    ("subject", "operation", "namespace", "expected"),
    [
        pytest.param(
            admitted(pod()), "CREATE", "team-a", {"uid": UID, "allowed": True}, id="valid-create"
        ),
        pytest.param(
            pod(),
            "CREATE",
            "team-a",
            {
                "uid": UID,
                "allowed": False,
                "status": {
                    "code": 403,
                    "reason": "Forbidden",
                    "message": 'pod rejected: the accounting sidecar "gpushare-sidecar" is'
                    " missing: GPU pods are admitted only through gpushare's mutating webhook,"
                    " which injects it",
                },
            },
            id="create-without-sidecar-refused",
        ),
        pytest.param(pod(), "UPDATE", "team-a", {"uid": UID, "allowed": True}, id="valid-update"),
        pytest.param(
            pod(container(limits=gpu(50, 0))),
            "UPDATE",
            "team-a",
            {
                "uid": UID,
                "allowed": False,
                "status": {
                    "code": 403,
                    "reason": "Forbidden",
                    "message": 'pod rejected: container "train" asks tencent.com/vcuda-memory=0;'
                    " it must be at least 1 (256 MiB)",
                },
            },
            id="invalid-update-refused",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 4)), annotations={"gpushare.io/sm-partition": "0"}),
            "CREATE",
            "team-a",
            {
                "uid": UID,
                "allowed": False,
                "status": {
                    "code": 403,
                    "reason": "Forbidden",
                    "message": "pod rejected: annotation gpushare.io/sm-partition=0; it must be an"
                    " integer percent of the GPU's SMs in 1..100",
                },
            },
            id="invalid-annotation-refused",
        ),
        pytest.param(
            pod(container(limits=gpu(150, 0))),
            "CREATE",
            "kube-system",
            {"uid": UID, "allowed": True},
            id="system-namespace-not-checked",
        ),
        pytest.param(None, "DELETE", "team-a", {"uid": UID, "allowed": True}, id="delete"),
    ],
)
def test_validate(
    client: FlaskClient,
    subject: dict[str, Any] | None,
    operation: str,
    namespace: str,
    expected: dict[str, Any],
) -> None:
    response = client.post(
        "/validate", json=review(subject, operation=operation, namespace=namespace)
    )
    assert response.status_code == 200
    assert response.json == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": expected,
    }


def _with_request(**changes: Any) -> bytes:
    body = review(pod())
    body["request"].update(changes)
    return json.dumps(body).encode()


def _without(field: str) -> bytes:
    body = review(pod())
    del body["request"][field]
    return json.dumps(body).encode()


BAD_BODIES = [
    pytest.param(b"{not json", "the body is not JSON", id="not-json"),
    pytest.param(b"[]", "the body must be a JSON object (an AdmissionReview)", id="json-list"),
    pytest.param(
        json.dumps({**review(pod()), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
        "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got"
        " apiVersion='admission.k8s.io/v1beta1' kind='AdmissionReview'",
        id="wrong-version",
    ),
    pytest.param(
        json.dumps({**review(pod()), "kind": "Pod"}).encode(),
        "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got"
        " apiVersion='admission.k8s.io/v1' kind='Pod'",
        id="wrong-kind",
    ),
    pytest.param(
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
        "request must be an object",
        id="no-request",
    ),
    pytest.param(_without("uid"), "request.uid must be a non-empty string", id="missing-uid"),
    pytest.param(_with_request(uid=""), "request.uid must be a non-empty string", id="empty-uid"),
    pytest.param(
        _with_request(operation="PATCH"),
        "request.operation must be one of CREATE, UPDATE, DELETE, CONNECT",
        id="bad-operation",
    ),
    pytest.param(
        _with_request(kind={"group": "apps", "version": "v1", "kind": "Deployment"}),
        "request.kind must be the core Pod kind, got {'group': 'apps', 'version': 'v1',"
        " 'kind': 'Deployment'}",
        id="not-a-pod-kind",
    ),
    pytest.param(
        _with_request(object={"apiVersion": "apps/v1", "kind": "Deployment", "spec": {}}),
        "request.object must be a v1 Pod, got apiVersion='apps/v1' kind='Deployment'",
        id="object-not-a-pod",
    ),
    pytest.param(
        _with_request(object=None),
        "request.object must be a Pod object for CREATE",
        id="create-without-object",
    ),
    pytest.param(
        _with_request(object={"metadata": {"name": "p"}, "spec": "big"}),
        "object.spec must be an object",
        id="spec-not-object",
    ),
    pytest.param(
        _with_request(object={**pod(), "spec": {**pod()["spec"], "volumes": "x"}}),
        "object.spec.volumes must be a list",
        id="volumes-not-list",
    ),
    pytest.param(
        _with_request(namespace=None, object={"metadata": {}, "spec": {"containers": []}}),
        "request.namespace must be a non-empty string",
        id="no-namespace",
    ),
    pytest.param(
        _with_request(operation="UPDATE", oldObject=[1]),
        "request.oldObject must be a Pod object for UPDATE",
        id="old-object-not-a-pod",
    ),
    pytest.param(b"[" * 100000 + b"]" * 100000, "the body is not JSON", id="deeply-nested-json"),
]


@pytest.mark.parametrize("endpoint", ["/mutate", "/validate"])
@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_malformed_input_gets_400(
    client: FlaskClient, endpoint: str, body: bytes, message: str
) -> None:
    response = client.post(endpoint, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["error"] == "bad-request"
    assert response.json["message"].startswith(message)


@pytest.mark.parametrize("endpoint", ["/mutate", "/validate"])
def test_body_over_limit_gets_400(settings: Settings, endpoint: str) -> None:
    app = create_app(dataclasses.replace(settings, max_body_bytes=4096), budgets=FakeBudgets())
    body = review(pod(annotations={"big": "x" * 5000}))
    response = app.test_client().post(endpoint, json=body)
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["message"].startswith("the body has ")
    assert response.json["message"].endswith("bytes; the limit is 4096")


def test_chunked_body_over_limit_gets_400(settings: Settings) -> None:
    app = create_app(dataclasses.replace(settings, max_body_bytes=4096), budgets=FakeBudgets())
    data = json.dumps(review(pod(annotations={"big": "x" * 5000}))).encode()
    response = app.test_client().post(
        "/mutate",
        input_stream=io.BytesIO(data),
        headers={"Transfer-Encoding": "chunked"},
        # As gunicorn does for a chunked body it has de-chunked.
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 400
    assert response.json == {
        "error": "bad-request",
        "message": "the body is over the limit of 4096 bytes",
    }


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        pytest.param("GET", "/healthz", 200, {"status": "ok"}, id="healthz"),
        pytest.param("GET", "/readyz", 200, {"status": "ready"}, id="readyz"),
        pytest.param(
            "GET",
            "/mutate",
            405,
            {"error": "method-not-allowed", "message": "GET is not allowed here"},
            id="get-mutate",
        ),
        pytest.param(
            "POST",
            "/nothing",
            404,
            {"error": "not-found", "message": "no endpoint POST /nothing"},
            id="unknown-path",
        ),
    ],
)
def test_probes_and_errors(
    client: FlaskClient, method: str, path: str, status: int, body: dict[str, Any]
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.json == body


def test_metrics_count_outcomes(client: FlaskClient) -> None:
    client.post("/mutate", json=review(pod()))
    client.post("/validate", json=review(pod(container(limits=gpu(150, 1)))))
    client.post("/mutate", data=b"nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'gpushare_webhook_requests_total{endpoint="mutate",outcome="allowed"} 1.0' in text
    assert 'gpushare_webhook_requests_total{endpoint="validate",outcome="denied"} 1.0' in text
    assert 'gpushare_webhook_requests_total{endpoint="mutate",outcome="bad-request"} 1.0' in text
    assert 'gpushare_webhook_request_seconds_count{endpoint="mutate"} 1.0' in text


def test_fail_open_is_counted(settings: Settings) -> None:
    app = create_app(settings, budgets=FakeBudgets(down=True))
    client = app.test_client()
    assert client.post("/mutate", json=review(pod())).json["response"]["allowed"] is True  # type: ignore[index]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'gpushare_webhook_failure_policy_total{policy="fail-open"} 1.0' in text


# --- property: no AdmissionReview, however odd, gets a 5xx --------------------------------

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["50", "100", "150", "1k", "500m", "-1", "1e3", "1Gi", ".5", "Always"]),
)
_json = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_quantity = st.one_of(_leaf, st.integers(min_value=-200, max_value=400).map(str))
_resources = st.dictionaries(
    st.sampled_from(["tencent.com/vcuda-core", "tencent.com/vcuda-memory", "cpu"]),
    _quantity,
    max_size=3,
)
_container = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=8), _leaf)},
    optional={
        "resources": st.one_of(
            st.fixed_dictionaries({}, optional={"limits": _resources, "requests": _resources}),
            _json,
        ),
        "restartPolicy": st.sampled_from(["Always", "Never", None]),
    },
)
_annotations = st.dictionaries(
    st.sampled_from(
        [
            "tencent.com/vcuda-core-limit",
            "gpushare.io/quota-request",
            "gpushare.io/quota-limit",
            "gpushare.io/sm-partition",
            "gpushare.io/sidecar-injected",
            "a/b~c",
        ]
    ),
    st.one_of(st.sampled_from(["0", "0.5", "1", "100", "101", "x"]), _leaf),
    max_size=4,
)
_pod = st.fixed_dictionaries(
    {
        "metadata": st.one_of(
            st.fixed_dictionaries({"name": st.just("p")}, optional={"annotations": _annotations}),
            _json,
        ),
        "spec": st.one_of(
            st.fixed_dictionaries(
                {"containers": st.one_of(st.lists(_container, max_size=3), _json)},
                optional={
                    "initContainers": st.one_of(st.lists(_container, max_size=2), _json),
                    "volumes": st.one_of(st.lists(_json, max_size=2), _json),
                    "priority": _leaf,
                    "priorityClassName": _leaf,
                },
            ),
            _json,
        ),
    },
    optional={"apiVersion": st.sampled_from(["v1", "apps/v1"]), "kind": _leaf},
)
_request = st.fixed_dictionaries(
    {
        "uid": st.one_of(st.just("u-1"), _leaf),
        "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", "x"]),
        "kind": st.one_of(st.just({"group": "", "version": "v1", "kind": "Pod"}), _json),
        "namespace": st.one_of(st.sampled_from(["team-a", "kube-system"]), _leaf),
        "object": st.one_of(_pod, _json),
    }
)
_review = st.one_of(
    st.fixed_dictionaries(
        {
            "apiVersion": st.just("admission.k8s.io/v1"),
            "kind": st.just("AdmissionReview"),
            "request": st.one_of(_request, _json),
        }
    ),
    _json,
)


@hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_review, endpoint=st.sampled_from(["/mutate", "/validate"]), down=st.booleans())
def test_generated_reviews_never_get_5xx(
    settings: Settings, body: Any, endpoint: str, down: bool
) -> None:
    app = create_app(settings, budgets=FakeBudgets(down=down))
    response = app.test_client().post(
        endpoint, data=json.dumps(body, allow_nan=True), content_type="application/json"
    )
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    payload = response.json
    assert payload is not None
    if response.status_code == 400:
        assert payload["error"] == "bad-request" and payload["message"]
    else:
        assert payload["response"]["uid"] == body["request"]["uid"]


def _with_sidecar_image(image: str) -> dict[str, Any]:
    subject = pod(
        container("train", limits=gpu(40, 4)),
        init=[container("gpushare-sidecar", image=image, restartPolicy="Always")],
    )
    return subject


@pytest.mark.parametrize(
    ("new_image", "expected"),
    [
        pytest.param("registry.example/gpushare:1", {"uid": UID, "allowed": True}, id="same"),
        pytest.param(
            "evil.example/fake:1",
            {
                "uid": UID,
                "allowed": False,
                "status": {
                    "code": 403,
                    "reason": "Forbidden",
                    "message": 'pod rejected: container "gpushare-sidecar" may not change its'
                    " image (from 'registry.example/gpushare:1' to 'evil.example/fake:1')",
                },
            },
            id="swapped",
        ),
    ],
)
def test_update_may_not_swap_the_sidecar_image(
    client: FlaskClient, new_image: str, expected: dict[str, Any]
) -> None:
    body = review(_with_sidecar_image(new_image), operation="UPDATE")
    body["request"]["oldObject"] = _with_sidecar_image("registry.example/gpushare:1")
    response = client.post("/validate", json=body)
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["response"] == expected


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_larger_than_one_read_chunk(client: FlaskClient, chunked: bool) -> None:
    data = json.dumps(review(admitted(pod(annotations={"big": "x" * 300_000})))).encode()
    headers = {"Transfer-Encoding": "chunked"} if chunked else {}
    response = client.post(
        "/validate",
        input_stream=io.BytesIO(data),
        headers=headers,
        content_length=None if chunked else len(data),
        environ_overrides={"wsgi.input_terminated": True} if chunked else {},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json is not None
    assert response.json["response"]["allowed"] is True
