"""Authentication and authorisation of reports and reads: static tokens and ServiceAccount
tokens (JWTs signed by keys generated here, published as a JWKS file or by OIDC discovery)."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.timekeeper.conftest import MakeApp, report_body
from timekeeper.auth import Authenticator, KeySource, TokenVerifier, load_tokens, parse_tokens
from timekeeper.errors import ConfigError, Unauthenticated, Unavailable

ISSUER = "https://kubernetes.default.svc.cluster.local"
STATIC_A = "static-token-team-a-0123456789"
STATIC_B = "static-token-team-b-0123456789"
UID = "7f1c1d3e-0000-4000-8000-000000000001"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY = new_key()
OTHER_KEY = new_key()


def jwks(*pairs: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    keys = []
    for kid, key in pairs:
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": keys}


def sa_token(
    *,
    namespace: str = "team-a",
    pod: str | None = "train-0",
    uid: str = UID,
    audience: str = "gpushare-timekeeper",
    issuer: str = ISSUER,
    expires_in: int = 3600,
    key: rsa.RSAPrivateKey = KEY,
    kid: str = "k1",
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": [audience],
        "iss": issuer,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + expires_in,
        "sub": f"system:serviceaccount:{namespace}:default",
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": "default", "uid": "sa-uid"},
        },
    }
    if pod is not None:
        claims["kubernetes.io"]["pod"] = {"name": pod, "uid": uid}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(("k1", KEY))))
    return path


@pytest.fixture
def authenticator(jwks_file: Path) -> Authenticator:
    return Authenticator(
        static_tokens=parse_tokens(
            {
                "tokens": [
                    {"token": STATIC_A, "namespace": "team-a"},
                    {"token": STATIC_B, "namespace": "team-b"},
                ]
            }
        ),
        verifier=TokenVerifier(KeySource(jwks_file=jwks_file), issuer=ISSUER),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("headers", "status", "fragment"),
    [
        pytest.param({}, 401, "missing `Authorization: Bearer <token>`", id="no-header"),
        pytest.param(
            {"Authorization": f"Basic {STATIC_A}"},
            401,
            "must be `Bearer <token>`",
            id="basic-scheme",
        ),
        pytest.param(bearer("not-a-known-token-at-all"), 401, "unknown token", id="unknown-static"),
        pytest.param(bearer(sa_token(key=OTHER_KEY)), 401, "token rejected", id="forged-signature"),
        pytest.param(bearer(sa_token(expires_in=-3600)), 401, "token expired", id="expired"),
        pytest.param(
            bearer(sa_token(audience="https://kubernetes.default.svc")),
            401,
            "not for the audience gpushare-timekeeper",
            id="wrong-audience",
        ),
        pytest.param(
            bearer(sa_token(issuer="https://evil.example")), 401, "not issued by", id="wrong-issuer"
        ),
        pytest.param(bearer(sa_token(kid="k9")), 401, "unknown key", id="unknown-key-id"),
        pytest.param(
            bearer(sa_token()[:-4] + "AAAA"), 401, "token rejected", id="tampered-signature"
        ),
        pytest.param(bearer(sa_token()), 200, None, id="service-account-own-pod"),
        pytest.param(bearer(sa_token(pod=None)), 200, None, id="service-account-no-pod-claim"),
        pytest.param(bearer(STATIC_A), 200, None, id="static-own-namespace"),
        pytest.param(
            bearer(sa_token(namespace="team-b")),
            403,
            "the token is for namespace 'team-b', the report is for 'team-a'",
            id="service-account-other-namespace",
        ),
        pytest.param(
            bearer(sa_token(pod="train-1")),
            403,
            "the token is for pod 'train-1'",
            id="service-account-other-pod",
        ),
        pytest.param(
            bearer(sa_token(uid="other-uid")),
            403,
            "the token is for pod UID",
            id="service-account-other-pod-uid",
        ),
        pytest.param(
            bearer(STATIC_B),
            403,
            "the token is for namespace 'team-b'",
            id="static-other-namespace",
        ),
    ],
)
def test_report_auth_matrix(
    make_app: MakeApp,
    authenticator: Authenticator,
    headers: dict[str, str],
    status: int,
    fragment: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_app(authenticator=authenticator).test_client()
    response = client.post("/api/v1/reports", json=report_body(), headers=headers)
    assert response.status_code == status, response.get_json()
    if fragment is not None:
        answer = response.get_json()
        assert answer["error"] == ("unauthenticated" if status == 401 else "forbidden")
        assert fragment in answer["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    token = headers.get("Authorization", "").partition(" ")[2]
    if token:
        assert token not in caplog.text
        assert token not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("read_requires_token", "headers", "status"),
    [
        pytest.param(False, {}, 200, id="open-by-default"),
        pytest.param(True, {}, 401, id="required-missing"),
        pytest.param(True, bearer("wrong-token-wrong-token"), 401, id="required-wrong"),
        pytest.param(True, bearer(STATIC_B), 200, id="required-any-valid-token"),
        pytest.param(
            True,
            bearer(sa_token(pod=None, namespace="gpushare-system")),
            200,
            id="required-service-account",
        ),
    ],
)
def test_read_endpoints(
    make_app: MakeApp,
    authenticator: Authenticator,
    read_requires_token: bool,
    headers: dict[str, str],
    status: int,
) -> None:
    client = make_app(
        authenticator=authenticator, read_requires_token=read_requires_token
    ).test_client()
    for path in (
        "/api/v1/namespaces",
        "/api/v1/namespaces/team-a",
        "/api/v1/namespaces/team-a/usage",
    ):
        assert client.get(path, headers=headers).status_code == status, path
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path


# --- OIDC discovery and key rotation over HTTP ------------------------------------------------


class _IssuerHandler(http.server.BaseHTTPRequestHandler):
    documents: ClassVar[dict[str, Any]] = {}
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        document = self.documents.get(self.path)
        self.send_response(200 if document is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(document or {}).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def issuer() -> Iterator[tuple[str, type[_IssuerHandler]]]:
    handler = type("Handler", (_IssuerHandler,), {"documents": {}, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    handler.documents["/.well-known/openid-configuration"] = {
        "issuer": url,
        "jwks_uri": f"{url}/openid/v1/jwks",
    }
    handler.documents["/openid/v1/jwks"] = jwks(("k1", KEY))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url, handler
    server.shutdown()
    server.server_close()


def test_oidc_discovery_finds_the_keys(issuer: tuple[str, type[_IssuerHandler]]) -> None:
    url, handler = issuer
    verifier = TokenVerifier(KeySource(issuer=url), issuer=url)
    identity = verifier.verify(sa_token(issuer=url))
    assert (identity.namespace, identity.pod, identity.pod_uid) == ("team-a", "train-0", UID)
    assert handler.requests == ["/.well-known/openid-configuration", "/openid/v1/jwks"]


def test_a_rotated_key_is_fetched_once_seen(
    issuer: tuple[str, type[_IssuerHandler]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = issuer
    keys = KeySource(jwks_url=f"{url}/openid/v1/jwks")
    verifier = TokenVerifier(keys)
    assert verifier.verify(sa_token()).namespace == "team-a"
    handler.documents["/openid/v1/jwks"] = jwks(("k1", KEY), ("k2", OTHER_KEY))
    # The refetch for an unknown key is rate-limited; let the limit pass.
    monkeypatch.setattr("timekeeper.auth.JWKS_MIN_REFETCH_SECONDS", -1.0)
    assert verifier.verify(sa_token(key=OTHER_KEY, kid="k2")).namespace == "team-a"


def test_unreachable_issuer_means_503_retry_not_401() -> None:
    # A 401 would make the sidecar give the interval up (4xx); the keys being unreachable is
    # not the caller's fault, so the answer is 503 and the sidecar retries.
    verifier = TokenVerifier(KeySource(jwks_url="http://127.0.0.1:1/jwks"))
    with pytest.raises(Unavailable, match="the signing keys cannot be fetched"):
        verifier.verify(sa_token())


def test_keys_fetched_again_after_an_outage_verify_and_unknown_keys_are_401(
    issuer: tuple[str, type[_IssuerHandler]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = issuer
    jwks_document = handler.documents.pop("/openid/v1/jwks")
    verifier = TokenVerifier(KeySource(jwks_url=f"{url}/openid/v1/jwks"))
    with pytest.raises(Unavailable):
        verifier.verify(sa_token())
    handler.documents["/openid/v1/jwks"] = jwks_document
    monkeypatch.setattr("timekeeper.auth.JWKS_MIN_REFETCH_SECONDS", -1.0)
    assert verifier.verify(sa_token()).namespace == "team-a"
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(sa_token(key=OTHER_KEY, kid="k9"))


# --- the tokens file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "problems"),
    [
        pytest.param(
            [], ["f: must be a mapping with one key `tokens` (got a list)"], id="not-a-mapping"
        ),
        pytest.param(
            {"tokens": {"a": 1}}, ["f: tokens: must be a list (got a dict)"], id="tokens-not-a-list"
        ),
        pytest.param(
            {"tokens": []},
            ["f: tokens: must list at least one {token, namespace} (got an empty list)"],
            id="no-token-at-all",
        ),
        pytest.param(
            {"tokens": ["x"]},
            ["f: tokens[0]: must be a mapping {token, namespace} (got a string of 1 characters)"],
            id="entry-not-a-mapping",
        ),
        pytest.param(
            {"tokens": [{"token": "short", "namespace": "team-a"}]},
            [
                "f: tokens[0].token: must be a string of at least 16 characters (got a "
                "string of 5 characters)"
            ],
            id="token-too-short",
        ),
        pytest.param(
            {"tokens": [{"token": STATIC_A, "namespace": "Team_A", "role": "x"}]},
            [
                "f: tokens[0].role: unknown key (the keys are token, namespace)",
                "f: tokens[0].namespace: must be a namespace name (RFC 1123 label) (got 'Team_A')",
            ],
            id="bad-namespace-and-unknown-key",
        ),
        pytest.param(
            {
                "tokens": [
                    {"token": STATIC_A, "namespace": "team-a"},
                    {"token": STATIC_A, "namespace": "team-b"},
                ]
            },
            ["f: tokens[1].token: the same token is listed twice"],
            id="duplicate",
        ),
    ],
)
def test_tokens_file_problems_have_field_paths(document: Any, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        parse_tokens(document, source="f")
    assert error.value.problems == problems
    assert STATIC_A not in str(error.value)


def test_tokens_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{token: {STATIC_A}, namespace: team-a}}\n")
    table = load_tokens(path)
    assert list(table.values()) == ["team-a"]
    assert STATIC_A not in table  # kept as digests only
