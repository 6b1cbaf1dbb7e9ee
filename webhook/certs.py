"""Certificates for the webhook: a CA and a serving certificate signed by it (adapter).

The CA's certificate is the `caBundle` of the webhook configurations. Rotation signs a new
serving certificate with the same CA (`ca_cert`/`ca_key` given), so the bundle stays valid.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE = "gpushare-webhook"
NAMESPACE = "gpushare-system"
DEFAULT_DNS_NAMES = (
    SERVICE,
    f"{SERVICE}.{NAMESPACE}",
    f"{SERVICE}.{NAMESPACE}.svc",
    f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
)


@dataclass(frozen=True)
class Bundle:
    """Paths of what was written, and the base64 caBundle."""

    ca_cert: Path
    cert: Path
    key: Path
    ca_bundle: str


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gpushare"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (rename), so a server watching the file never reads half of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _new_ca(
    now: datetime.datetime, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("gpushare webhook CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def validity_problem(cert_file: Path, now: datetime.datetime | None = None) -> str | None:
    """Why the serving certificate (the first in the file) cannot be served now, or None.

    The API server refuses an expired (or not yet valid) certificate on every call, which
    with `failurePolicy: Fail` refuses every pod the webhook matches: better to stop at start.
    """
    moment = now or datetime.datetime.now(datetime.UTC)
    try:
        leaf = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    except (OSError, ValueError) as err:
        return f"cannot be read as a PEM certificate: {err}"
    if leaf.not_valid_after_utc <= moment:
        return f"the certificate expired at {leaf.not_valid_after_utc.isoformat()}"
    if leaf.not_valid_before_utc > moment:
        return f"the certificate is not valid before {leaf.not_valid_before_utc.isoformat()}"
    return None


def generate(
    out_dir: Path,
    dns_names: tuple[str, ...] = DEFAULT_DNS_NAMES,
    *,
    ip_addresses: tuple[str, ...] = (),
    days: int = 365,
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
) -> Bundle:
    """Write `ca.crt`, `tls.crt`, `tls.key` (and `ca.key` for a new CA) into `out_dir`."""
    if not dns_names and not ip_addresses:
        raise ValueError("at least one DNS name or IP address is needed")
    if days < 1:
        raise ValueError(f"--days: must be at least 1 (got {days})")
    now = datetime.datetime.now(datetime.UTC)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (ca_cert is None) != (ca_key is None):
        raise ValueError("--ca-cert and --ca-key go together")
    if ca_cert is not None and ca_key is not None:
        authority = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key} is not an EC private key")
        authority_key = loaded
    else:
        authority, authority_key = _new_ca(now, days=10 * 365)
        _write(
            out_dir / "ca.key",
            authority_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            0o600,
        )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else ip_addresses[0]))
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()),
            critical=False,
        )
        .sign(authority_key, hashes.SHA256())
    )
    ca_pem = authority.public_bytes(serialization.Encoding.PEM)
    _write(out_dir / "ca.crt", ca_pem, 0o644)
    # Key first, then certificate: a reader that sees the new certificate sees its key.
    _write(
        out_dir / "tls.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(out_dir / "tls.crt", cert.public_bytes(serialization.Encoding.PEM) + ca_pem, 0o644)
    return Bundle(
        out_dir / "ca.crt",
        out_dir / "tls.crt",
        out_dir / "tls.key",
        base64.b64encode(ca_pem).decode(),
    )
