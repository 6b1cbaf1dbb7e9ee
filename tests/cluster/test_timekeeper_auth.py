"""The timekeeper's ServiceAccount-token authentication against the real API server.

The timekeeper is set up the way the chart's default sets it up (`--jwks-url` and
`--oidc-discovery-url` on the API server itself, no issuer given, the cluster's CA, its own
ServiceAccount's token, the chart's RBAC rendered by helm): it fetches the signing keys from
the real kube-apiserver, learns the issuer from its discovery document, and judges real tokens
from TokenRequest (`kubectl create token`, pod-bound to Pods bound to a Node; nothing runs
them). OIDC discovery of a given issuer is tested too.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import jwt
import kubernetes.client
import pytest
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm

from gpushare.annotations import TIMEKEEPER_AUDIENCE
from tests.cluster.controlplane import ControlPlane
from tests.timekeeper.servers import start_server
from timekeeper import database
from timekeeper.api import build_authenticator, create_app
from timekeeper.auth import Authenticator, KeySource, TokenVerifier
from timekeeper.buckets import from_hours_and_rest
from timekeeper.errors import Unauthenticated, Unavailable
from timekeeper.models import usage_buckets
from timekeeper.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "deployment" / "chart"
TIMEKEEPER_ACCOUNT = "gpushare-timekeeper"


@dataclass
class Cluster:
    """Two tenant namespaces with bound pods, and the timekeeper's own ServiceAccount token."""

    control_plane: ControlPlane
    team_a: str
    team_b: str
    uids: dict[str, str]
    """`namespace/pod` -> the pod's UID."""
    reader_token_file: Path
    """The timekeeper's own ServiceAccount token (what the chart mounts)."""

    def token(
        self,
        namespace: str,
        pod: str | None = None,
        *,
        audience: str = TIMEKEEPER_AUDIENCE,
        account: str = "default",
    ) -> str:
        """A real token from TokenRequest (`kubectl create token`), pod-bound if `pod`."""
        args = ["create", "token", account, "-n", namespace, "--audience", audience]
        if pod is not None:
            args += ["--bound-object-kind", "Pod", "--bound-object-name", pod]
        return self.control_plane.kubectl(*args).stdout.strip()

    def settings(self, database_url: str) -> Settings:
        """What the chart's default (`auth.mode: serviceaccount`, `oidcIssuer` unset) passes
        to the timekeeper, with the API server's URL for `https://kubernetes.default.svc`."""
        return Settings(
            database_url=database_url,
            jwks_url=f"{self.control_plane.url}/openid/v1/jwks",
            oidc_discovery_url=f"{self.control_plane.url}/.well-known/openid-configuration",
            oidc_ca_file=self.control_plane.ca_file,
            oidc_token_file=self.reader_token_file,
        )


def _namespace(core: Any, stem: str) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"gpushare-test": name}}})
    try:
        core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    except kubernetes.client.ApiException as err:
        if err.status != 409:
            raise
    return name


def _chart_rbac(control_plane: ControlPlane, namespace: str, binding: str) -> list[dict[str, Any]]:
    """The timekeeper's ServiceAccount and ClusterRoleBinding as the chart renders them, the
    binding renamed so that it cannot meet another test's release."""
    rendered = control_plane.helm(
        "template",
        "gpushare",
        str(CHART),
        "--namespace",
        namespace,
        "--show-only",
        "templates/timekeeper-rbac.yaml",
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert {doc["kind"] for doc in objects} == {"ServiceAccount", "ClusterRoleBinding"}
    for doc in objects:
        if doc["kind"] == "ClusterRoleBinding":
            assert doc["roleRef"]["name"] == "system:service-account-issuer-discovery"
            doc["metadata"]["name"] = binding
    return objects


@pytest.fixture(scope="module")
def cluster(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    node = f"tk-auth-{uuid.uuid4().hex[:6]}"
    binding = f"{node}-issuer-discovery"
    with control_plane.api_client() as client:
        core: Any = kubernetes.client.CoreV1Api(client)
        team_a, team_b = _namespace(core, "tk-auth-a"), _namespace(core, "tk-auth-b")
        try:
            control_plane.make_node(node, {})
            uids: dict[str, str] = {}
            for namespace, pod in ((team_a, "train-0"), (team_a, "train-1"), (team_b, "eval-0")):
                created = core.create_namespaced_pod(
                    namespace,
                    {
                        "metadata": {"name": pod},
                        "spec": {
                            "nodeName": node,  # bound: a pod-bound token needs a node
                            "containers": [{"name": "main", "image": "registry.example/a:1"}],
                        },
                    },
                )
                uids[f"{namespace}/{pod}"] = str(created.metadata.uid)
            rbac = _chart_rbac(control_plane, team_a, binding)
            control_plane.kubectl("apply", "-n", team_a, "-f", "-", input=yaml.safe_dump_all(rbac))
            reader = tmp_path_factory.mktemp("timekeeper-sa") / "token"
            made = Cluster(control_plane, team_a, team_b, uids, reader)
            # The chart mounts the timekeeper's own token; the same from TokenRequest.
            reader.write_text(_audience_free(made, team_a, TIMEKEEPER_ACCOUNT))
            yield made
        finally:
            control_plane.kubectl(
                "delete", "clusterrolebinding", binding, "--ignore-not-found", check=False
            )
            for namespace in (team_a, team_b):
                core.delete_namespace(namespace)
                core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
            core.delete_node(node)


def _audience_free(cluster: Cluster, namespace: str, account: str) -> str:
    return cluster.control_plane.kubectl("create", "token", account, "-n", namespace).stdout.strip()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'timekeeper.db'}"
    database.upgrade(url)
    return url


MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(cluster: Cluster, database_url: str) -> Iterator[MakeApp]:
    engines: list[sa.Engine] = []

    def make(authenticator: Authenticator | None = None) -> Flask:
        engine = database.make_engine(database_url)
        engines.append(engine)
        return create_app(
            cluster.settings(database_url), engine=engine, authenticator=authenticator
        )

    yield make
    for engine in engines:
        engine.dispose()


def report(namespace: str, pod: str, uid: str, *, sequence: int = 1) -> dict[str, Any]:
    """A one-minute report that ended a minute ago (the server's clock is the real one)."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1 + 2 * sequence)
    return {
        "podUid": uid,
        "pod": pod,
        "namespace": namespace,
        "sequence": sequence,
        "start": (end - timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "vcudaCore": 50,
        "vcudaMemory": 4,
    }


def post(client: FlaskClient, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    response = client.post(
        "/api/v1/reports", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    answer: dict[str, Any] = response.get_json()
    return response.status_code, answer


def charged(app: Flask, namespace: str) -> int:
    with app.extensions["gpushare"]["engine"].connect() as connection:
        rows = connection.execute(
            sa.select(usage_buckets.c.core_hours, usage_buckets.c.core_microseconds).where(
                usage_buckets.c.namespace == namespace
            )
        ).all()
    return sum(from_hours_and_rest(hours, rest) for hours, rest in rows)


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    document: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return document


def with_header(token: str, **changes: str) -> str:
    """The same token (payload and signature) with header fields changed."""
    header_part, payload, signature = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4)))
    header.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.{payload}.{signature}"


# --- the matrix ---------------------------------------------------------------------------------


def test_own_pod_is_accepted_and_every_other_pod_is_refused(
    cluster: Cluster, make_app: MakeApp
) -> None:
    app = make_app()
    client = app.test_client()
    a, b = cluster.team_a, cluster.team_b
    train_0, train_1 = cluster.uids[f"{a}/train-0"], cluster.uids[f"{a}/train-1"]
    own = cluster.token(a, "train-0")
    assert claims(own)["kubernetes.io"]["pod"] == {"name": "train-0", "uid": train_0}

    status, answer = post(client, report(a, "train-0", train_0), own)
    assert (status, answer["namespace"], answer["gpuSeconds"]) == (200, a, 30.0), answer

    cases = [
        (
            "other-namespace",
            cluster.token(b, "eval-0"),
            report(a, "train-0", train_0, sequence=2),
            403,
            f"namespace: the token is for namespace '{b}', the report is for '{a}'",
        ),
        (
            "other-pod-name",
            cluster.token(a, "train-1"),
            report(a, "train-0", train_0, sequence=2),
            403,
            "pod: the token is for pod 'train-1', the report is for 'train-0'",
        ),
        (
            "other-pod-uid",
            own,
            report(a, "train-0", train_1, sequence=2),
            403,
            f"podUid: the token is for pod UID '{train_0}', the report is for '{train_1}'",
        ),
        (
            "not-bound-to-a-pod",
            cluster.token(a),
            report(a, "train-0", train_0, sequence=2),
            403,
            "a report needs a ServiceAccount token bound to the reporting pod",
        ),
        (
            "wrong-audience",
            _audience_free(cluster, a, "default"),
            report(a, "train-0", train_0, sequence=2),
            401,
            f"token is not for the audience {TIMEKEEPER_AUDIENCE}",
        ),
        (
            "es256-naming-the-rsa-key",
            with_header(own, alg="ES256"),
            report(a, "train-0", train_0, sequence=2),
            401,
            "its algorithm ES256 does not fit the key",
        ),
        (
            "signed-by-another-key-under-the-real-key-id",
            jwt.encode(
                claims(own),
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                algorithm="RS256",
                headers={"kid": jwt.get_unverified_header(own)["kid"]},
            ),
            report(a, "train-0", train_0, sequence=2),
            401,
            "Signature verification failed",
        ),
    ]
    outcomes = {}
    for case, token, body, _, _ in cases:
        status, answer = post(client, body, token)
        outcomes[case] = (status, answer["message"])
    for case, _, _, status, fragment in cases:
        assert outcomes[case][0] == status, (case, outcomes[case])
        assert fragment in outcomes[case][1], (case, outcomes[case])
    assert charged(app, a) == 50 * 60 * 10**6, "only the own pod's report is charged"
    assert charged(app, b) == 0


def test_an_expired_real_token_is_refused(cluster: Cluster, make_app: MakeApp) -> None:
    # TokenRequest gives at least 10 minutes, so the token is real and the timekeeper's
    # clock is moved past its `exp` (plus the 30 s leeway) instead.
    a = cluster.team_a
    token = cluster.token(a, "train-0")
    expires = claims(token)["exp"]
    settings = cluster.settings("sqlite://")
    issuer = cluster.control_plane.service_account_issuer

    def authenticator(at: float) -> Authenticator:
        keys = KeySource(
            issuer=issuer,
            ca_file=settings.oidc_ca_file,
            bearer_file=settings.oidc_token_file,
        )
        verifier = TokenVerifier(keys, issuer=issuer, clock=lambda: at)
        return Authenticator(verifier=verifier)

    body = report(a, "train-0", cluster.uids[f"{a}/train-0"])
    status, answer = post(make_app(authenticator(expires + 29)).test_client(), body, token)
    assert status == 200, answer
    status, answer = post(make_app(authenticator(expires + 31)).test_client(), body, token)
    assert (status, answer["message"]) == (401, "token expired 31 s ago (leeway 30 s)")


def test_another_namespace_cannot_take_a_pod_key_first(cluster: Cluster, make_app: MakeApp) -> None:
    a, b = cluster.team_a, cluster.team_b
    train_0 = cluster.uids[f"{a}/train-0"]
    app = make_app()
    client = app.test_client()
    # team-b's pod names team-a's pod UID, in its own namespace and in team-a's.
    squatter = cluster.token(b, "eval-0")
    for body in (report(b, "eval-0", train_0), report(a, "eval-0", train_0)):
        status, answer = post(client, body, squatter)
        assert status == 403, answer
    # So does a token of team-b's namespace alone.
    status, answer = post(client, report(b, "eval-0", train_0), cluster.token(b))
    assert status == 403, answer
    status, answer = post(client, report(a, "train-0", train_0), cluster.token(a, "train-0"))
    assert (status, answer["gpuSeconds"]) == (200, 30.0), answer
    assert (charged(app, a), charged(app, b)) == (50 * 60 * 10**6, 0)


# --- how the keys are fetched --------------------------------------------------------------------


def test_the_keys_need_the_cluster_ca_and_a_bearer_token(cluster: Cluster) -> None:
    token = cluster.token(cluster.team_a, "train-0")
    issuer = cluster.control_plane.service_account_issuer
    without_ca = TokenVerifier(
        KeySource(issuer=issuer, bearer_file=cluster.reader_token_file), issuer=issuer
    )
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        without_ca.verify(token)
    without_bearer = TokenVerifier(
        KeySource(issuer=issuer, ca_file=cluster.control_plane.ca_file), issuer=issuer
    )
    with pytest.raises(Unavailable, match="no bearer token was sent"):
        without_bearer.verify(token)
    chart_way = build_authenticator(cluster.settings("sqlite://"))
    assert chart_way.identify(f"Bearer {token}").pod == "train-0"


def test_the_charts_binding_alone_lets_the_timekeeper_read_the_keys(cluster: Cluster) -> None:
    # Kubernetes also grants the role to every ServiceAccount through the group
    # `system:serviceaccounts`; impersonating the account without that group shows what the
    # chart's own ClusterRoleBinding grants, as on a cluster where the default was removed.
    def read_as(account: str, path: str) -> subprocess.CompletedProcess[str]:
        return cluster.control_plane.kubectl(
            "get",
            "--raw",
            path,
            f"--as=system:serviceaccount:{account}",
            "--as-group=system:authenticated",
            check=False,
        )

    for path in ("/.well-known/openid-configuration", "/openid/v1/jwks"):
        allowed = read_as(f"{cluster.team_a}:{TIMEKEEPER_ACCOUNT}", path)
        assert allowed.returncode == 0, (path, allowed.stderr)
        assert json.loads(allowed.stdout), path
    refused = read_as(f"{cluster.team_b}:default", "/openid/v1/jwks")
    assert refused.returncode != 0
    assert 'cannot get path "/openid/v1/jwks"' in refused.stderr, refused.stderr


def test_the_server_started_the_way_the_chart_starts_it_charges_a_pod(
    cluster: Cluster, database_url: str, tmp_path: Path
) -> None:
    settings = cluster.settings(database_url)
    server = start_server(
        [
            "--database-url",
            database_url,
            f"--jwks-url={settings.jwks_url}",
            f"--oidc-discovery-url={settings.oidc_discovery_url}",
            f"--oidc-ca-file={settings.oidc_ca_file}",
            f"--oidc-token-file={settings.oidc_token_file}",
            "--workers=1",
        ],
        log_path=tmp_path / "timekeeper.log",
    )
    try:
        a = cluster.team_a
        body = report(a, "train-0", cluster.uids[f"{a}/train-0"])
        token = cluster.token(a, "train-0")
        status, answer = server.request(
            "POST", "/api/v1/reports", body, {"Authorization": f"Bearer {token}"}
        )
        assert (status, answer["gpuSeconds"]) == (200, 30.0), (answer, server.log())
        status, answer = server.request(
            "POST", "/api/v1/reports", body, {"Authorization": f"Bearer {cluster.token(a)}"}
        )
        assert status == 403, answer
        assert token not in server.log()
    finally:
        server.stop()


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    document: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/jwk-set+json")
        self.end_headers()
        self.wfile.write(json.dumps(self.document).encode())

    def log_message(self, *args: Any) -> None:
        pass


def test_the_chart_default_learns_the_issuer_and_refuses_tokens_of_another(
    cluster: Cluster,
) -> None:
    a = cluster.team_a
    real = cluster.token(a, "train-0")
    issuer = cluster.control_plane.service_account_issuer
    assert claims(real)["iss"] == issuer
    chart_way = build_authenticator(cluster.settings("sqlite://"))
    assert chart_way.identify(f"Bearer {real}").pod == "train-0"

    # The API server signs only with its own issuer, so a token naming another is signed here
    # with a key of the test's, served as the JWKS; the issuer is still learned from the real
    # API server's discovery document, as the chart's default does.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    handler = type("Handler", (_JwksHandler,), {})
    handler.document = {
        "keys": [
            {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "test", "alg": "RS256"}
        ]
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings = cluster.settings("sqlite://")
        verifier = TokenVerifier(
            KeySource(
                jwks_url=f"http://127.0.0.1:{server.server_address[1]}/jwks",
                discovery_url=settings.oidc_discovery_url,
                ca_file=settings.oidc_ca_file,
                bearer_file=settings.oidc_token_file,
            )
        )
        authenticator = Authenticator(verifier=verifier)

        def signed(**changes: str) -> str:
            payload = {**claims(real), **changes}
            return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "test"})

        assert authenticator.identify(f"Bearer {signed()}").pod == "train-0"
        with pytest.raises(Unauthenticated, match=f"^token not issued by {re.escape(issuer)}$"):
            authenticator.identify(f"Bearer {signed(iss='https://oidc.other.example/id/1')}")
    finally:
        server.shutdown()
        server.server_close()
