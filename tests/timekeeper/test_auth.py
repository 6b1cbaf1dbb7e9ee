"""Authentication and authorisation of reports and reads: static tokens and ServiceAccount
tokens (JWTs signed by keys generated here, published as a JWKS file or by OIDC discovery)."""

from __future__ import annotations

import http.server
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from jwt.algorithms import RSAAlgorithm

from tests.timekeeper.conftest import MakeApp, report_body
from timekeeper.auth import Authenticator, KeySource, TokenVerifier
from timekeeper.buckets import from_hours_and_rest
from timekeeper.errors import Unauthenticated, Unavailable
from timekeeper.models import usage_buckets
from timekeeper.static_tokens import parse_tokens

ISSUER = "https://kubernetes.default.svc.cluster.local"
STATIC_A = "static-token-team-a-0123456789"
STATIC_B = "static-token-team-b-0123456789"
UID = "7f1c1d3e-0000-4000-8000-000000000001"
TOKEN_WITHOUT_THE_ROLE = "a-valid-token-without-the-discovery-role"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY = new_key()
OTHER_KEY = new_key()
EC_KEY = ec.generate_private_key(ec.SECP256R1())


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
    key: Any = KEY,
    kid: str = "k1",
    algorithm: str = "RS256",
    now: int | None = None,
) -> str:
    now = int(time.time()) if now is None else now
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
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


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
            bearer(sa_token(now=int(time.time()) + 3600)),
            401,
            "token not valid for another",
            id="not-valid-yet",
        ),
        pytest.param(
            bearer(sa_token(key=EC_KEY, algorithm="ES256")),
            401,
            "its algorithm ES256 does not fit the key 'k1' (RSA, RS256)",
            id="es256-naming-an-rsa-key",
        ),
        pytest.param(
            bearer(sa_token(key="a-shared-secret-of-32-bytes-or-more", algorithm="HS256")),
            401,
            "algorithm 'HS256' is not one of RS256",
            id="hs256-never-taken",
        ),
        pytest.param(
            bearer(sa_token(key=None, algorithm="none")),
            401,
            "algorithm 'none' is not one of",
            id="unsigned",
        ),
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
        pytest.param(
            bearer(sa_token(pod=None)),
            403,
            "a report needs a ServiceAccount token bound to the reporting pod",
            id="service-account-not-bound-to-a-pod",
        ),
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
    """Serves discovery and keys the way kube-apiserver does: the JWKS only as
    `application/jwk-set+json` (406 for a client that accepts only `application/json`), the
    discovery document as `application/json`, and, when `bearer` is set, only to a caller
    presenting it (401 without a token, 403 with another)."""

    documents: ClassVar[dict[str, Any]] = {}
    requests: ClassVar[list[str]] = []
    bearer: ClassVar[str | None] = None

    def do_GET(self) -> None:
        self.requests.append(self.path)
        document = self.documents.get(self.path)
        offered = "application/jwk-set+json" if self.path.endswith("jwks") else "application/json"
        accepted = {
            part.split(";")[0].strip() for part in self.headers.get("Accept", "*/*").split(",")
        }
        authorization = self.headers.get("Authorization")
        if self.bearer is not None and authorization != f"Bearer {self.bearer}":
            # kube-apiserver: 401 for no token or one it does not know, 403 for a valid
            # token without the role.
            known = authorization == f"Bearer {TOKEN_WITHOUT_THE_ROLE}"
            status, document = (403 if known else 401), {"kind": "Status"}
        elif document is None:
            status, document = 404, {"kind": "Status"}
        elif not accepted & {offered, "*/*", "application/*"}:
            status, document = 406, {"kind": "Status"}
        else:
            status = 200
        self.send_response(status)
        self.send_header("Content-Type", offered if status == 200 else "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(document).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def issuer() -> Iterator[tuple[str, type[_IssuerHandler]]]:
    handler = type("Handler", (_IssuerHandler,), {"documents": {}, "requests": [], "bearer": None})
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


def test_oidc_discovery_finds_the_keys(
    issuer: tuple[str, type[_IssuerHandler]], tmp_path: Path
) -> None:
    url, handler = issuer
    handler.bearer = "the-timekeeper-own-service-account-token"
    bearer_file = tmp_path / "token"
    bearer_file.write_text(handler.bearer + "\n")
    verifier = TokenVerifier(KeySource(issuer=url, bearer_file=bearer_file), issuer=url)
    identity = verifier.verify(sa_token(issuer=url))
    assert (identity.namespace, identity.pod, identity.pod_uid) == ("team-a", "train-0", UID)
    assert handler.requests == ["/.well-known/openid-configuration", "/openid/v1/jwks"]


def test_the_issuer_is_learned_from_a_discovery_document_served_elsewhere(
    issuer: tuple[str, type[_IssuerHandler]],
) -> None:
    # A managed cluster: the API server serves the document and keys itself, but the issuer
    # it names is a public URL the timekeeper never fetches.
    url, handler = issuer
    public = "https://oidc.cloud.example/id/ABC"
    handler.documents["/.well-known/openid-configuration"] = {
        "issuer": public,
        "jwks_uri": f"{public}/keys",
    }
    keys = KeySource(
        jwks_url=f"{url}/openid/v1/jwks",
        discovery_url=f"{url}/.well-known/openid-configuration",
    )
    verifier = TokenVerifier(keys)
    assert verifier.verify(sa_token(issuer=public)).pod == "train-0"
    assert keys.issuer == public
    with pytest.raises(Unauthenticated, match=f"^token not issued by {re.escape(public)}$"):
        verifier.verify(sa_token(issuer=url))
    assert handler.requests == ["/.well-known/openid-configuration", "/openid/v1/jwks"]
    # Given an issuer the document does not name, no keys are taken and both are named.
    mismatched = TokenVerifier(
        KeySource(issuer=url, discovery_url=f"{url}/.well-known/openid-configuration")
    )
    with pytest.raises(Unavailable, match=f"the document is for the issuer '{re.escape(public)}'"):
        mismatched.verify(sa_token(issuer=url))


@pytest.mark.parametrize(
    ("bearer_token", "fragment"),
    [
        pytest.param(
            None,
            "401 Unauthorized (no bearer token was sent: give one with the role "
            "system:service-account-issuer-discovery with --oidc-token-file)",
            id="no-bearer",
        ),
        pytest.param(
            "an-expired-or-unknown-token",
            "401 Unauthorized (the bearer token was refused: check --oidc-token-file)",
            id="bearer-refused",
        ),
        pytest.param(
            TOKEN_WITHOUT_THE_ROLE,
            "403 Forbidden (the bearer token lacks the system:service-account-issuer-discovery",
            id="bearer-without-the-role",
        ),
    ],
)
def test_keys_behind_a_bearer_token_say_what_is_missing(
    issuer: tuple[str, type[_IssuerHandler]],
    tmp_path: Path,
    bearer_token: str | None,
    fragment: str,
) -> None:
    url, handler = issuer
    handler.bearer = "the-timekeeper-own-service-account-token"
    bearer_file = None
    if bearer_token is not None:
        bearer_file = tmp_path / "token"
        bearer_file.write_text(bearer_token)
    verifier = TokenVerifier(KeySource(issuer=url, bearer_file=bearer_file), issuer=url)
    with pytest.raises(Unavailable) as error:
        verifier.verify(sa_token(issuer=url))
    assert fragment in error.value.message
    assert handler.bearer not in error.value.message


def test_the_bearer_token_never_goes_over_plain_http_to_another_machine(tmp_path: Path) -> None:
    bearer_file = tmp_path / "token"
    bearer_file.write_text("the-timekeeper-own-service-account-token")
    keys = KeySource(jwks_url="http://keys.example/openid/v1/jwks", bearer_file=bearer_file)
    with pytest.raises(Unavailable, match="the bearer token is only sent over https://"):
        TokenVerifier(keys).verify(sa_token())


def test_the_jwks_is_asked_for_as_a_jwk_set(issuer: tuple[str, type[_IssuerHandler]]) -> None:
    # The stand-in refuses `Accept: application/json` alone for the keys, as kube-apiserver
    # does (406); the fetch must name `application/jwk-set+json`.
    url, _ = issuer
    request = urllib.request.Request(
        f"{url}/openid/v1/jwks", headers={"Accept": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 406
    assert TokenVerifier(KeySource(jwks_url=f"{url}/openid/v1/jwks")).verify(sa_token())


def test_a_discovery_document_for_another_issuer_is_refused(
    issuer: tuple[str, type[_IssuerHandler]],
) -> None:
    url, handler = issuer
    handler.documents["/.well-known/openid-configuration"]["issuer"] = "https://elsewhere"
    verifier = TokenVerifier(KeySource(issuer=url), issuer=url)
    with pytest.raises(Unavailable, match="the document is for the issuer 'https://elsewhere'"):
        verifier.verify(sa_token(issuer=url))


@pytest.mark.parametrize(
    ("seconds_after_expiry", "accepted"),
    [
        pytest.param(-1, True, id="before-exp"),
        pytest.param(29, True, id="within-the-leeway"),
        pytest.param(31, False, id="past-the-leeway"),
    ],
)
def test_expiry_is_checked_against_the_verifier_clock(
    jwks_file: Path, seconds_after_expiry: int, accepted: bool
) -> None:
    token = sa_token(now=1_800_000_000, expires_in=600)
    verifier = TokenVerifier(
        KeySource(jwks_file=jwks_file),
        issuer=ISSUER,
        leeway_seconds=30,
        clock=lambda: 1_800_000_600 + seconds_after_expiry,
    )
    if accepted:
        assert verifier.verify(token).pod == "train-0"
    else:
        with pytest.raises(Unauthenticated, match=r"token expired 31 s ago \(leeway 30 s\)"):
            verifier.verify(token)


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


# --- charges stay in their namespace -----------------------------------------------------------


def charged_core_microseconds(app: Flask, namespace: str) -> int:
    """What the running totals charge `namespace` (vcuda-core units x microseconds)."""
    engine = app.extensions["gpushare"]["engine"]
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(usage_buckets.c.core_hours, usage_buckets.c.core_microseconds).where(
                usage_buckets.c.namespace == namespace
            )
        ).all()
    return sum(from_hours_and_rest(hours, rest) for hours, rest in rows)


def test_a_static_token_of_another_namespace_cannot_take_a_pod_key_first(
    make_app: MakeApp, authenticator: Authenticator
) -> None:
    app = make_app(authenticator=authenticator)
    client = app.test_client()
    # team-b names team-a's pod UID and sequences first, over the same interval and the next.
    for sequence, start, end in ((1, "05:49", "05:50"), (2, "05:50", "05:51")):
        squat = report_body(
            namespace="team-b",
            sequence=sequence,
            start=f"2026-11-21T{start}:00Z",
            end=f"2026-11-21T{end}:00Z",
            vcudaCore=1,
        )
        assert (
            client.post("/api/v1/reports", json=squat, headers=bearer(STATIC_B)).status_code == 200
        )
    # team-a's genuine reports are stored and charged in full: no 409, no overlap.
    for sequence, start, end in ((1, "05:49", "05:50"), (2, "05:50", "05:51")):
        genuine = report_body(
            sequence=sequence, start=f"2026-11-21T{start}:00Z", end=f"2026-11-21T{end}:00Z"
        )
        response = client.post("/api/v1/reports", json=genuine, headers=bearer(STATIC_A))
        assert response.status_code == 200, response.get_json()
        assert (response.get_json()["namespace"], response.get_json()["gpuSeconds"]) == (
            "team-a",
            30.0,
        )
        # A resend is still answered from the ledger, from team-a's own row.
        again = client.post("/api/v1/reports", json=genuine, headers=bearer(STATIC_A))
        assert again.get_json() == response.get_json()
    assert charged_core_microseconds(app, "team-a") == 50 * 120 * 10**6
    assert charged_core_microseconds(app, "team-b") == 1 * 120 * 10**6  # its own 1 % only
    # Within team-a the pod's key and overlap rules still hold.
    overlapping = report_body(sequence=3, start="2026-11-21T05:49:30Z", end="2026-11-21T05:52:00Z")
    response = client.post("/api/v1/reports", json=overlapping, headers=bearer(STATIC_A))
    assert response.status_code == 400
    assert (
        "overlaps sequence 2 (2026-11-21T05:50:00Z..2026-11-21T05:51:00Z) of pod "
        in (response.get_json()["message"])
    )
    changed = report_body(sequence=1, vcudaCore=100)
    response = client.post("/api/v1/reports", json=changed, headers=bearer(STATIC_A))
    assert response.status_code == 409


@pytest.mark.parametrize(
    ("token", "body", "fragment"),
    [
        pytest.param(
            sa_token(namespace="team-b", pod="eval-0", uid="uid-of-team-b-pod"),
            report_body(namespace="team-b", pod="eval-0"),
            "podUid: the token is for pod UID 'uid-of-team-b-pod'",
            id="team-b-pod-names-team-a-pod-uid",
        ),
        pytest.param(
            sa_token(namespace="team-b", pod=None),
            report_body(namespace="team-b", pod="eval-0"),
            "a report needs a ServiceAccount token bound to the reporting pod",
            id="team-b-namespace-token",
        ),
        pytest.param(
            sa_token(namespace="team-b", pod="eval-0", uid="uid-of-team-b-pod"),
            report_body(),
            "namespace: the token is for namespace 'team-b', the report is for 'team-a'",
            id="team-b-pod-reports-for-team-a",
        ),
    ],
)
def test_a_service_account_token_cannot_report_another_pod_uid(
    make_app: MakeApp, authenticator: Authenticator, token: str, body: dict[str, Any], fragment: str
) -> None:
    app = make_app(authenticator=authenticator)
    client = app.test_client()
    squat = client.post("/api/v1/reports", json=body, headers=bearer(token))
    assert squat.status_code == 403
    assert fragment in squat.get_json()["message"]
    genuine = client.post("/api/v1/reports", json=report_body(), headers=bearer(sa_token()))
    assert genuine.status_code == 200
    assert charged_core_microseconds(app, "team-a") == 50 * 60 * 10**6
    assert charged_core_microseconds(app, "team-b") == 0
