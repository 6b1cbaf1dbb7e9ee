"""`gpushare webhook` refuses to start on certificates it cannot serve, naming the flag, the
file and the reason (real processes; nothing is served)."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from webhook import certs

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def _self_signed(folder: Path, name: str, not_before: datetime.datetime, days: int) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + days * DAY)
        .sign(key, hashes.SHA256())
    )
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / f"{name}.crt"


@pytest.mark.parametrize(
    ("not_before", "days", "expected"),
    [
        pytest.param(NOW - 3 * DAY, 2, "the certificate expired at", id="expired"),
        pytest.param(NOW + DAY, 30, "the certificate is not valid before", id="not-yet-valid"),
        pytest.param(NOW - DAY, 30, None, id="valid"),
    ],
)
def test_validity_window_of_the_serving_certificate(
    tmp_path: Path, not_before: datetime.datetime, days: int, expected: str | None
) -> None:
    problem = certs.validity_problem(_self_signed(tmp_path, "tls", not_before, days))
    assert (problem or "").startswith(expected or "")
    assert (problem is None) is (expected is None)


def _start(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpushare", "webhook", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "", **env},
    )


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        pytest.param(
            lambda d: ("--cert", f"{d}/old.crt", "--key", f"{d}/old.key"),
            "gpushare webhook: --cert: the certificate expired at",
            id="expired-certificate",
        ),
        pytest.param(
            lambda d: ("--cert", f"{d}/new.crt", "--key", f"{d}/old.key"),
            "gpushare webhook: --cert/--key do not load ([X509: KEY_VALUES_MISMATCH]",
            id="key-of-another-certificate",
        ),
        pytest.param(
            lambda d: ("--cert", f"{d}/new.key", "--key", f"{d}/new.key"),
            "gpushare webhook: --cert/--key do not load (",
            id="key-given-as-certificate",
        ),
    ],
)
def test_unusable_certificates_stop_the_start(
    tmp_path: Path, make_args: object, message: str
) -> None:
    _self_signed(tmp_path, "old", NOW - 10 * DAY, 1)
    _self_signed(tmp_path, "new", NOW - DAY, 30)
    args = make_args(tmp_path)  # type: ignore[operator]
    result = _start(*args, "--timekeeper-url", "http://timekeeper:8080")
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert f"(got '{args[1]}'" in result.stderr
    assert "Traceback" not in result.stderr


def test_flag_values_are_reported_under_the_flag(tmp_path: Path) -> None:
    cert = _self_signed(tmp_path, "tls", NOW - DAY, 30)
    result = _start(
        *("--cert", str(cert), "--key", str(tmp_path / "tls.key")),
        *("--timekeeper-url", "ftp://timekeeper", "--timekeeper-timeout", "soon"),
        *("--failure-policy", "open", "--sidecar-mode", "sidecar"),
        GPUSHARE_WEBHOOK_TIMEKEEPER_TOKEN_FILE=str(tmp_path / "no-token"),
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gpushare webhook: invalid configuration:",
        "  --timekeeper-timeout (GPUSHARE_WEBHOOK_TIMEKEEPER_TIMEOUT_SECONDS): must be a number"
        " (got 'soon')",
        "  --timekeeper-url (GPUSHARE_WEBHOOK_TIMEKEEPER_URL): must be an http:// or https://"
        " URL with a host (got 'ftp://timekeeper')",
        "  --failure-policy (GPUSHARE_WEBHOOK_FAILURE_POLICY): must be one of fail-open,"
        " fail-closed (got 'open')",
        "  --sidecar-mode (GPUSHARE_WEBHOOK_SIDECAR_MODE): must be one of native, classic"
        " (got 'sidecar')",
        "  GPUSHARE_WEBHOOK_TIMEKEEPER_TOKEN_FILE: must be a readable file"
        f" (got '{tmp_path / 'no-token'}')",
    ]


@pytest.mark.parametrize("days", [pytest.param("0", id="zero"), pytest.param("-5", id="negative")])
def test_certs_generate_refuses_a_validity_that_is_over_before_it_starts(
    tmp_path: Path, days: str
) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gpushare", "certs", "generate"),
            *("--out", str(tmp_path / "out"), "--dns", "localhost", "--days", days),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == f"gpushare certs generate: --days: must be at least 1 (got {days})\n"
    assert not (tmp_path / "out").exists()  # nothing half-written
