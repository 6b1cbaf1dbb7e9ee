"""Who is calling: static tokens (standalone) and ServiceAccount tokens (in a cluster).

A sidecar presents `Authorization: Bearer <token>`. Standalone, a tokens file maps static
tokens to namespaces. In a cluster the token is the pod's projected ServiceAccount token (a
JWT for the audience `gpushare-timekeeper`), verified against the API server's published
signing keys (JWKS from a file, a URL, or OIDC discovery of the issuer); the namespace, pod
name and pod UID come from its `kubernetes.io` claims. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
import yaml

from gpushare.annotations import TIMEKEEPER_AUDIENCE
from timekeeper.errors import ConfigError, Forbidden, Unauthenticated, Unavailable
from timekeeper.reports import Report, is_namespace_name

logger = logging.getLogger(__name__)

ALGORITHMS: Final = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256")
MIN_TOKEN_LENGTH: Final = 16
JWKS_REFRESH_SECONDS: Final = 300.0
"""Keys are refetched this often, and at most this often... unless an unknown key id shows up."""
JWKS_MIN_REFETCH_SECONDS: Final = 10.0
FETCH_TIMEOUT_SECONDS: Final = 5.0


@dataclass(frozen=True)
class Identity:
    """A verified caller."""

    namespace: str | None
    """None only for an anonymous caller (demo mode)."""
    pod: str | None = None
    pod_uid: str | None = None
    subject: str = ""
    """For logs: `static token for team-a`, `system:serviceaccount:ns:name`; never a token."""


ANONYMOUS: Final = Identity(namespace=None, subject="anonymous")


# --- static tokens -------------------------------------------------------------------------


def load_tokens(path: Path) -> dict[str, str]:
    """The tokens file as {sha256(token): namespace}; `ConfigError` lists every problem."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError([f"{path}: cannot read a YAML document ({err})"]) from err
    return parse_tokens(document, source=str(path))


def parse_tokens(document: Any, *, source: str = "tokens file") -> dict[str, str]:
    problems: list[str] = []
    table: dict[str, str] = {}
    if not isinstance(document, dict) or set(document) != {"tokens"}:
        raise ConfigError(
            [f"{source}: must be a mapping with one key `tokens` (got {_shape(document)})"]
        )
    entries = document["tokens"]
    if not isinstance(entries, list):
        raise ConfigError([f"{source}: tokens: must be a list (got {_shape(entries)})"])
    if not entries:
        # With no token every report is refused: a mistake, never a set-up.
        raise ConfigError(
            [f"{source}: tokens: must list at least one {{token, namespace}} (got an empty list)"]
        )
    for index, entry in enumerate(entries):
        where = f"{source}: tokens[{index}]"
        if not isinstance(entry, dict):
            problems.append(
                f"{where}: must be a mapping {{token, namespace}} (got {_shape(entry)})"
            )
            continue
        for key in sorted(set(entry) - {"token", "namespace"}, key=str):
            problems.append(f"{where}.{key}: unknown key (the keys are token, namespace)")
        token, namespace = entry.get("token"), entry.get("namespace")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            # The value is a secret: describe it, never print it.
            problems.append(
                f"{where}.token: must be a string of at least {MIN_TOKEN_LENGTH} characters "
                f"(got {_shape(token)})"
            )
            token = None
        if not isinstance(namespace, str) or not is_namespace_name(namespace):
            problems.append(
                f"{where}.namespace: must be a namespace name (RFC 1123 label) (got {namespace!r})"
            )
            namespace = None
        if token is not None and namespace is not None:
            digest = _digest(token)
            if digest in table:
                problems.append(f"{where}.token: the same token is listed twice")
            table[digest] = namespace
    if problems:
        raise ConfigError(problems)
    return table


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _shape(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__}"


# --- ServiceAccount tokens (JWT) -----------------------------------------------------------


class KeySource:
    """The signing keys (JWKS), from a file, a URL, or OIDC discovery of an issuer."""

    def __init__(
        self,
        *,
        jwks_file: Path | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        ca_file: Path | None = None,
        bearer_file: Path | None = None,
    ) -> None:
        if not (jwks_file or jwks_url or issuer):
            raise ValueError("a JWKS file, a JWKS URL or an issuer is needed")
        self._jwks_file = jwks_file
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._bearer_file = bearer_file
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._fetch_error: str | None = None
        if jwks_file is not None:
            self._keys = _parse_jwks(_read_json_file(jwks_file), source=str(jwks_file))
            self._fetched_at = float("inf")

    def key_for(self, kid: str | None) -> Any:
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

    def _pick(self, kid: str | None) -> Any:
        if kid is not None:
            return self._keys.get(kid)
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None

    def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            url = self._jwks_url or self._discover()
            self._keys = _parse_jwks(self._fetch(url), source=url)
            self._fetch_error = None
        except (OSError, ValueError, ConfigError, http.client.HTTPException) as err:
            # Keep the keys we had; a token whose key we cannot find gets 503 (retry) while
            # the keys cannot be fetched, 401 once they can and still lack it.
            self._fetch_error = str(err)
            logger.error("cannot fetch the ServiceAccount signing keys: %s", err)

    def _discover(self) -> str:
        assert self._issuer is not None
        document = self._fetch(self._issuer.rstrip("/") + "/.well-known/openid-configuration")
        uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(uri, str):
            raise ValueError(f"the issuer {self._issuer} publishes no jwks_uri")
        return uri

    def _fetch(self, url: str) -> Any:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self._bearer_file is not None:
            bearer = self._bearer_file.read_text(encoding="utf-8").strip()
            request.add_header("Authorization", f"Bearer {bearer}")
        with urllib.request.urlopen(
            request, timeout=FETCH_TIMEOUT_SECONDS, context=self._ssl
        ) as response:
            return json.loads(response.read())


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError([f"{path}: cannot read a JSON document ({err})"]) from err


def _parse_jwks(document: Any, *, source: str) -> dict[str, Any]:
    try:
        key_set = jwt.PyJWKSet.from_dict(document)
    except (jwt.PyJWKError, jwt.PyJWKSetError, TypeError, AttributeError) as err:
        raise ConfigError([f"{source}: not a usable JWKS ({err})"]) from err
    keys: dict[str, Any] = {}
    for index, key in enumerate(key_set.keys):
        keys[key.key_id or f"#{index}"] = key.key
    return keys


class TokenVerifier:
    """Verifies projected ServiceAccount tokens: signature, expiry, audience, issuer."""

    def __init__(self, keys: KeySource, *, issuer: str | None = None) -> None:
        self._keys = keys
        self._issuer = issuer

    def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.key_for(header.get("kid"))
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=TIMEKEEPER_AUDIENCE,
                issuer=self._issuer,
                options={"require": ["exp", "aud"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError as err:
            raise Unauthenticated("token expired") from err
        except jwt.InvalidAudienceError as err:
            raise Unauthenticated(f"token is not for the audience {TIMEKEEPER_AUDIENCE}") from err
        except jwt.InvalidIssuerError as err:
            raise Unauthenticated(f"token not issued by {self._issuer}") from err
        except jwt.PyJWTError as err:
            raise Unauthenticated(f"token rejected: {err}") from err
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
        )


# --- the authenticator the API uses --------------------------------------------------------


class Authenticator:
    """Turns an `Authorization` header into an `Identity`, and checks what it may report."""

    def __init__(
        self,
        *,
        static_tokens: dict[str, str] | None = None,
        verifier: TokenVerifier | None = None,
        allow_anonymous_reports: bool = False,
    ) -> None:
        self._static = static_tokens or {}
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
        namespace = self._static.get(_digest(token))
        if namespace is not None:
            return Identity(namespace=namespace, subject=f"static token for {namespace}")
        if self._verifier is not None and token.count(".") == 2:
            return self._verifier.verify(token)
        raise Unauthenticated("unknown token")

    def identify_reporter(self, authorization: str | None) -> Identity:
        return self.identify(authorization, anonymous_ok=self._allow_anonymous)


def authorize_report(identity: Identity, report: Report) -> None:
    """`Forbidden` unless the caller may report for this namespace and pod."""
    if identity.namespace is None:  # anonymous demo mode
        return
    if identity.namespace != report.namespace:
        raise Forbidden(
            f"namespace: the token is for namespace {identity.namespace!r}, the report is "
            f"for {report.namespace!r}"
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
