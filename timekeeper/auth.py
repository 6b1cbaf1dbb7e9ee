"""Who is calling: static tokens (standalone) and ServiceAccount tokens (in a cluster).

A sidecar presents `Authorization: Bearer <token>`. Standalone, a tokens file maps static
tokens to namespaces (`static_tokens`). In a cluster the token is the pod's projected
ServiceAccount token (a JWT for the audience `gpushare-timekeeper`, bound to the pod),
verified against the API server's published signing keys (JWKS from a file, a URL, or OIDC
discovery of the issuer); the namespace, pod name and pod UID come from its `kubernetes.io`
claims. Tokens are never logged.

kube-apiserver serves its keys at `/openid/v1/jwks` as `application/jwk-set+json` only (a
request that accepts only `application/json` gets 406) and its discovery document at
`/.well-known/openid-configuration` as `application/json`; both need a bearer token with the
`system:service-account-issuer-discovery` role, over TLS signed by the cluster's CA.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt

from gpushare.annotations import TIMEKEEPER_AUDIENCE
from timekeeper.errors import ConfigError, Forbidden, Unauthenticated, Unavailable
from timekeeper.reports import Report
from timekeeper.static_tokens import TokenTable

logger = logging.getLogger(__name__)

_RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
ALGORITHMS: Final = (*_RSA_ALGORITHMS, "ES256", "ES384", "ES512")
"""Signature algorithms a ServiceAccount token may use; each key allows only its own."""
JWKS_REFRESH_SECONDS: Final = 300.0
"""Keys are refetched this often, and at most every `JWKS_MIN_REFETCH_SECONDS` when a token
names an unknown key id (a rotation)."""
JWKS_MIN_REFETCH_SECONDS: Final = 10.0
FETCH_TIMEOUT_SECONDS: Final = 5.0
MAX_DOCUMENT_BYTES: Final = 1024 * 1024
"""A discovery document or JWKS larger than this is refused before it is parsed."""
TOKEN_LEEWAY_SECONDS: Final = 30.0
"""How far past `exp` (or before `nbf`) a token is still taken: clocks of nodes differ."""
LOOPBACK_HOSTS: Final = ("127.0.0.1", "::1", "localhost")
JWKS_ACCEPT: Final = "application/jwk-set+json, application/json;q=0.9"
DISCOVERY_ACCEPT: Final = "application/json"


@dataclass(frozen=True)
class Identity:
    """A verified caller."""

    namespace: str | None
    """None only for an anonymous caller (demo mode)."""
    pod: str | None = None
    pod_uid: str | None = None
    subject: str = ""
    """For logs: `static token for team-a`, `system:serviceaccount:ns:name`; never a token."""
    service_account: bool = False
    """A ServiceAccount token: it can carry a pod, so a report needs one bound to its pod."""


ANONYMOUS: Final = Identity(namespace=None, subject="anonymous")


# --- the signing keys ----------------------------------------------------------------------


class KeySource:
    """The signing keys (JWKS), from a file, a URL, or OIDC discovery of an issuer."""

    def __init__(
        self,
        *,
        jwks_file: Path | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        discovery_url: str | None = None,
        ca_file: Path | None = None,
        bearer_file: Path | None = None,
    ) -> None:
        if not (jwks_file or jwks_url or issuer or discovery_url):
            raise ValueError("a JWKS file, a JWKS URL, an issuer or a discovery URL is needed")
        self._jwks_file = jwks_file
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._discovery_url = discovery_url
        self.issuer = issuer
        """The issuer: the one given, else the discovery document's (once fetched)."""
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._bearer_file = bearer_file
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._fetch_error: str | None = None
        if jwks_file is not None:
            self._keys = _parse_jwks(_read_json_file(jwks_file), source=str(jwks_file))
            self._fetched_at = float("inf")

    def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The public key with id `kid` (or the only key, when the token names none)."""
        now = time.monotonic()
        key = self._pick(kid)
        stale = now - self._fetched_at > JWKS_REFRESH_SECONDS
        may_refetch = now - self._fetched_at > JWKS_MIN_REFETCH_SECONDS
        if (key is None and may_refetch) or stale:
            with self._lock:
                if time.monotonic() - self._fetched_at > JWKS_MIN_REFETCH_SECONDS:
                    self._refresh()
            key = self._pick(kid)
        if key is None and self._fetch_error is not None:
            # Not the caller's fault: a 401 would make a sidecar give the interval up, a 503
            # makes it retry until the keys can be fetched again.
            raise Unavailable(
                f"cannot verify the token now: the signing keys cannot be fetched "
                f"({self._fetch_error}); retry later"
            )
        if key is None:
            raise Unauthenticated(f"token signed with an unknown key (kid {kid!r})")
        return key

    def _pick(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None

    def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            issuer, url = self._issuer, self._jwks_url
            if self._discovery_url is not None or url is None:
                issuer, uri = self._discover()
                url = url or uri
            assert url is not None
            self._keys = _parse_jwks(self._fetch(url, accept=JWKS_ACCEPT), source=url)
            self.issuer = issuer
            self._fetch_error = None
        except (OSError, ValueError, ConfigError, http.client.HTTPException) as err:
            # Keep the keys we had; a token whose key we cannot find gets 503 (retry) while
            # the keys cannot be fetched, 401 once they can and still lack it.
            self._fetch_error = str(err)
            logger.error("cannot fetch the ServiceAccount signing keys: %s", err)

    def _discover(self) -> tuple[str | None, str | None]:
        """The issuer and `jwks_uri` of the discovery document (of the issuer, or at the
        discovery URL: kube-apiserver serves its own whatever the issuer is)."""
        url = self._discovery_url
        if url is None:
            assert self._issuer is not None
            url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._fetch(url, accept=DISCOVERY_ACCEPT)
        if not isinstance(document, dict):
            raise ValueError(f"{url}: the discovery document is not a JSON object")
        issuer, uri = document.get("issuer"), document.get("jwks_uri")
        if self._issuer is None:
            if not isinstance(issuer, str) or not issuer:
                raise ValueError(f"{url}: the document names no issuer (got {issuer!r})")
            return issuer, None if self._jwks_url else _jwks_uri(url, uri)
        if isinstance(issuer, str) and issuer.rstrip("/") != self._issuer.rstrip("/"):
            # OpenID Connect Discovery: the document must name the issuer it was fetched for;
            # the tokens would fail the issuer check anyway, and this says why.
            raise ValueError(
                f"{url}: the document is for the issuer {issuer!r}, not {self._issuer!r} "
                "(set the issuer to the API server's --service-account-issuer)"
            )
        return self._issuer, None if self._jwks_url else _jwks_uri(url, uri)

    def _fetch(self, url: str, *, accept: str) -> Any:
        request = urllib.request.Request(url, headers={"Accept": accept})
        if self._bearer_file is not None:
            host = urllib.parse.urlsplit(url).hostname or ""
            if not url.startswith("https://") and host not in LOOPBACK_HOSTS:
                raise ValueError(
                    f"GET {url}: the bearer token is only sent over https:// (or to this "
                    "machine): plain http would show it to the network"
                )
            # Re-read each time: the kubelet rotates a projected token in place.
            bearer = self._bearer_file.read_text(encoding="utf-8").strip()
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(
                request, timeout=FETCH_TIMEOUT_SECONDS, context=self._ssl
            ) as response:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as err:
            if self._bearer_file is None and err.code in (401, 403):
                hint = (
                    " (no bearer token was sent: give one with the role "
                    "system:service-account-issuer-discovery with --oidc-token-file)"
                )
            else:
                hint = {
                    401: " (the bearer token was refused: check --oidc-token-file)",
                    403: " (the bearer token lacks the system:service-account-issuer-discovery"
                    " role)",
                    406: " (the server offers another content type)",
                }.get(err.code, "")
            raise ValueError(f"GET {url}: {err.code} {err.reason}{hint}") from err
        except urllib.error.URLError as err:
            raise ValueError(f"GET {url}: {err.reason}") from err
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"GET {url}: more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as err:
            raise ValueError(f"GET {url}: not a JSON document ({err})") from err


def _jwks_uri(url: str, uri: Any) -> str:
    if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
        raise ValueError(f"{url}: the issuer publishes no jwks_uri (got {uri!r})")
    return uri


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError([f"{path}: cannot read a JSON document ({err})"]) from err


def _parse_jwks(document: Any, *, source: str) -> dict[str, jwt.PyJWK]:
    try:
        key_set = jwt.PyJWKSet.from_dict(document)
    except (jwt.PyJWKError, jwt.PyJWKSetError, TypeError, AttributeError) as err:
        raise ConfigError([f"{source}: not a usable JWKS ({err})"]) from err
    keys: dict[str, jwt.PyJWK] = {}
    for index, key in enumerate(key_set.keys):
        keys[key.key_id or f"#{index}"] = key
    return keys


# --- ServiceAccount tokens (JWT) -----------------------------------------------------------


class TokenVerifier:
    """Verifies projected ServiceAccount tokens: algorithm, signature, validity window,
    audience, issuer.

    `clock` gives the time (seconds since the epoch) against which `exp` and `nbf` are
    checked, with `leeway_seconds` either side.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str | None = None,
        leeway_seconds: float = TOKEN_LEEWAY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._leeway_seconds = leeway_seconds
        self._clock = clock

    def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise Unauthenticated(f"token rejected: {err}") from err
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated(
                f"token rejected: algorithm {_short(algorithm)} is not one of "
                f"{', '.join(ALGORITHMS)}"
            )
        key = self._keys.key_for(header.get("kid"))
        # Given, or else learned from the discovery document with the keys.
        issuer = self._issuer if self._issuer is not None else self._keys.issuer
        if key.algorithm_name != algorithm:
            # An RSA key only verifies RS*/PS* signatures, an EC key only its curve's ES*:
            # a token naming another algorithm cannot be one the key signed.
            raise Unauthenticated(
                f"token rejected: its algorithm {algorithm} does not fit the key "
                f"{_short(key.key_id)} ({key.key_type}, {key.algorithm_name})"
            )
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=TIMEKEEPER_AUDIENCE,
                issuer=issuer,
                # The validity window is checked below against this verifier's clock.
                options={
                    "require": ["exp", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError as err:
            raise Unauthenticated(f"token is not for the audience {TIMEKEEPER_AUDIENCE}") from err
        except jwt.InvalidIssuerError as err:
            raise Unauthenticated(f"token not issued by {issuer}") from err
        except jwt.PyJWTError as err:
            raise Unauthenticated(f"token rejected: {err}") from err
        self._check_window(claims)
        kubernetes = claims.get("kubernetes.io")
        if not isinstance(kubernetes, dict) or not isinstance(kubernetes.get("namespace"), str):
            raise Unauthenticated("token has no kubernetes.io namespace claim")
        pod_claim = kubernetes.get("pod")
        pod: dict[str, Any] = pod_claim if isinstance(pod_claim, dict) else {}
        return Identity(
            namespace=kubernetes["namespace"],
            pod=pod.get("name") if isinstance(pod.get("name"), str) else None,
            pod_uid=pod.get("uid") if isinstance(pod.get("uid"), str) else None,
            subject=str(claims.get("sub", "service account")),
            service_account=True,
        )

    def _check_window(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        expires, not_before = claims.get("exp"), claims.get("nbf")
        if not _is_number(expires) or (not_before is not None and not _is_number(not_before)):
            raise Unauthenticated("token rejected: exp and nbf must be numbers")
        assert isinstance(expires, int | float)
        if now > expires + self._leeway_seconds:
            raise Unauthenticated(
                f"token expired {now - expires:.0f} s ago (leeway {self._leeway_seconds:g} s)"
            )
        if isinstance(not_before, int | float) and now < not_before - self._leeway_seconds:
            raise Unauthenticated(
                f"token not valid for another {not_before - now:.0f} s "
                f"(leeway {self._leeway_seconds:g} s)"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- the authenticator the API uses --------------------------------------------------------


class Authenticator:
    """Turns an `Authorization` header into an `Identity`, and checks what it may report."""

    def __init__(
        self,
        *,
        static_tokens: TokenTable | dict[str, str] | None = None,
        verifier: TokenVerifier | None = None,
        allow_anonymous_reports: bool = False,
    ) -> None:
        if isinstance(static_tokens, dict):
            static_tokens = TokenTable.fixed(static_tokens)
        self._static = static_tokens
        self._verifier = verifier
        self._allow_anonymous = allow_anonymous_reports

    def identify(self, authorization: str | None, *, anonymous_ok: bool = False) -> Identity:
        """The caller behind `authorization`; `Unauthenticated` when it does not verify."""
        if not authorization:
            if anonymous_ok:
                return ANONYMOUS
            raise Unauthenticated("missing `Authorization: Bearer <token>` header")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the Authorization header must be `Bearer <token>`")
        namespace = self._static.namespace_of(token) if self._static is not None else None
        if namespace is not None:
            return Identity(namespace=namespace, subject=f"static token for {namespace}")
        if self._verifier is not None and token.count(".") == 2:
            return self._verifier.verify(token)
        raise Unauthenticated("unknown token")

    def identify_reporter(self, authorization: str | None) -> Identity:
        return self.identify(authorization, anonymous_ok=self._allow_anonymous)


def authorize_report(identity: Identity, report: Report) -> None:
    """`Forbidden` unless the caller may report for this namespace and pod.

    A static token covers its namespace. A ServiceAccount token can carry a pod, so a report
    needs one bound to the reporting pod, with the same pod name and UID: a token of the
    namespace alone could report any pod UID of it, which it has no business charging.
    """
    if identity.namespace is None:  # anonymous demo mode
        return
    if identity.namespace != report.namespace:
        raise Forbidden(
            f"namespace: the token is for namespace {identity.namespace!r}, the report is "
            f"for {report.namespace!r}"
        )
    if identity.service_account and (identity.pod is None or identity.pod_uid is None):
        raise Forbidden(
            f"token: a report needs a ServiceAccount token bound to the reporting pod (the "
            f"projected token of the pod's volume); the token of {identity.subject} names "
            f"no pod"
        )
    if identity.pod is not None and identity.pod != report.pod:
        raise Forbidden(
            f"pod: the token is for pod {identity.pod!r}, the report is for {report.pod!r}"
        )
    if identity.pod_uid is not None and identity.pod_uid != report.pod_uid:
        raise Forbidden(
            f"podUid: the token is for pod UID {identity.pod_uid!r}, the report is for "
            f"{report.pod_uid!r}"
        )
