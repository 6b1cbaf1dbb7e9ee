"""The real control plane itself: scheduling onto made Nodes, controllers, ServiceAccount tokens."""

from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import kubernetes.client
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cluster.controlplane import ControlPlane, Scheduler
from tests.polling import wait_until


def _pod(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            # Only the node this test made: other tests' Nodes may exist at the same time.
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/app:1",
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                }
            ],
        },
    }


def test_pods_are_bound_to_a_made_node_by_a_real_scheduler(
    control_plane: ControlPlane,
    namespace: str,
    make_node: Callable[..., Any],
    scheduler: Scheduler,
) -> None:
    node = f"node-{uuid.uuid4().hex[:8]}"
    make_node(node, {"cpu": "4", "memory": "8Gi"})
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        apps = kubernetes.client.AppsV1Api(client)
        core.create_namespaced_pod(namespace, _pod("bare", node))
        template = _pod("deployed", node)
        apps.create_namespaced_deployment(
            namespace,
            {
                "metadata": {"name": "deployed"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "deployed"}},
                    "template": template,
                },
            },
        )
        # A pod asking more than the node holds stays Pending: the scheduler really fits.
        too_big = _pod("too-big", node)
        too_big["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "5"
        core.create_namespaced_pod(namespace, too_big)

        def bound() -> bool:
            pods = core.list_namespaced_pod(namespace).items
            placed = {p.metadata.labels["app"]: p.spec.node_name for p in pods}
            return placed.get("bare") == node and placed.get("deployed") == node

        wait_until(bound, timeout=30, what=f"pods bound to {node}")

        def refused() -> bool:
            pod = core.read_namespaced_pod("too-big", namespace)
            conditions = pod.status.conditions or []
            return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

        wait_until(refused, timeout=30, what="the too-big pod marked Unschedulable")
        assert core.read_namespaced_pod("too-big", namespace).spec.node_name is None


def test_the_controller_manager_makes_default_service_accounts(
    control_plane: ControlPlane,
) -> None:
    name = f"bare-{uuid.uuid4().hex[:8]}"
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": name}})
        try:
            wait_until(
                lambda: core.read_namespaced_service_account("default", name),
                timeout=30,
                what="the default ServiceAccount",
                ignoring=(kubernetes.client.ApiException,),
            )
            wait_until(
                lambda: core.read_namespaced_config_map("kube-root-ca.crt", name),
                timeout=30,
                what="the kube-root-ca.crt ConfigMap",
                ignoring=(kubernetes.client.ApiException,),
            )
        finally:
            core.delete_namespace(name)


def _fetch_json(control_plane: ControlPlane, path: str, accept: str) -> Any:
    request = urllib.request.Request(
        control_plane.url + path,
        headers={"Authorization": f"Bearer {control_plane.admin_token}", "Accept": accept},
    )
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        return json.loads(reply.read())


def test_a_token_request_token_verifies_against_the_served_jwks(
    control_plane: ControlPlane, namespace: str
) -> None:
    audience = f"gpushare-test-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        issued = core.create_namespaced_service_account_token(
            "default",
            namespace,
            {"spec": {"audiences": [audience], "expirationSeconds": 600}},
        )
    token = issued.status.token

    discovery = _fetch_json(control_plane, "/.well-known/openid-configuration", "application/json")
    assert discovery["issuer"] == control_plane.service_account_issuer
    assert discovery["jwks_uri"].endswith("/openid/v1/jwks")
    keys = jwt.PyJWKSet.from_dict(
        _fetch_json(control_plane, "/openid/v1/jwks", "application/jwk-set+json")
    )
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)

    claims = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=control_plane.service_account_issuer,
    )
    assert claims["sub"] == f"system:serviceaccount:{namespace}:default"
    assert claims["kubernetes.io"]["namespace"] == namespace

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, stranger, algorithms=["RS256"], audience=audience)
