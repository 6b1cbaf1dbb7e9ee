"""The real app under gunicorn with real TLS: certificates, admission, and rotation."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.webhook.builders import (
    FakeTimekeeper,
    apply_and_check,
    decode_patch,
    fake_timekeeper,
    pod,
    review,
    wire_status,
)
from tests.webhook.serving import Served, generate_certs, leaf_der, serve_webhook

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serving") / "certs"
    generate_certs(out)
    return out


@pytest.fixture(scope="module")
def timekeeper() -> Iterator[FakeTimekeeper]:
    with fake_timekeeper() as server:
        server.statuses["team-a"] = wire_status("exhausted", "deprioritize")
        server.statuses["interns"] = wire_status("exhausted", "deny", usedGpuHours=11)
        yield server


@pytest.fixture(scope="module")
def served(cert_dir: Path, timekeeper: FakeTimekeeper) -> Iterator[Served]:
    with serve_webhook(cert_dir, timekeeper.url) as webhook:
        yield webhook


def test_certs_cli_prints_the_ca_bundle(tmp_path: Path) -> None:
    bundle = generate_certs(tmp_path)
    assert base64.b64decode(bundle) == (tmp_path / "ca.crt").read_bytes()
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600


def test_certs_cli_rejects_half_a_ca(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gpushare", "certs", "generate"),
            *("--out", str(tmp_path), "--ca-cert", str(tmp_path / "x")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "gpushare certs generate: --ca-cert and --ca-key go together\n"


@pytest.mark.parametrize(
    "server_name",
    [
        pytest.param("gpushare-webhook.gpushare-system.svc", id="service-dns-name"),
        pytest.param("localhost", id="localhost"),
    ],
)
def test_certificate_verifies_against_generated_ca(
    served: Served, cert_dir: Path, server_name: str
) -> None:
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        assert tls.getpeercert(binary_form=True) == leaf_der(cert_dir / "tls.crt")


def test_other_ca_is_refused(served: Served, tmp_path: Path) -> None:
    generate_certs(tmp_path)
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with (
        socket.create_connection(("127.0.0.1", served.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


def test_mutate_over_tls(served: Served) -> None:
    subject = pod()
    status, body = served.post("/mutate", review(subject))
    assert status == 200
    patched = apply_and_check(subject, decode_patch(body))
    assert patched["spec"]["priorityClassName"] == "gpushare-overbudget"
    assert patched["metadata"]["annotations"]["gpushare.io/budget-state"] == "exhausted"


def test_deny_over_tls(served: Served) -> None:
    status, body = served.post("/mutate", review(pod(namespace="interns"), namespace="interns"))
    assert status == 200
    assert body["response"]["allowed"] is False
    assert body["response"]["status"]["message"] == (
        'pod rejected: namespace "interns" has used 11.00 of its 10 GPU-hours budget and'
        " refuses new GPU pods when it is exhausted; the budget refills at 2026-12-01T00:00:00Z"
    )


def test_malformed_over_tls_is_400_and_server_keeps_serving(served: Served) -> None:
    status, body = served.post("/validate", {"kind": "nonsense"})
    assert status == 400
    assert body["error"] == "bad-request"
    status, _ = served.post("/validate", review(pod()))
    assert status == 200


def test_metrics_over_tls(served: Served) -> None:
    connection = served.connect()
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    assert response.status == 200
    assert b"gpushare_webhook_requests_total" in response.read()


def test_bad_configuration_exits_with_every_reason(cert_dir: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gpushare", "webhook", "--cert", str(cert_dir / "missing.crt")),
            *("--key", str(cert_dir / "tls.key"), "--timekeeper-url", "nope", "--workers", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"GPUSHARE_WEBHOOK_FAILURE_POLICY": "sometimes", "PATH": ""},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gpushare webhook: invalid configuration:",
        "  --timekeeper-url (GPUSHARE_WEBHOOK_TIMEKEEPER_URL): must be an http:// or https://"
        " URL with a host (got 'nope')",
        "  GPUSHARE_WEBHOOK_FAILURE_POLICY: must be one of fail-open, fail-closed"
        " (got 'sometimes')",
        f"  --cert: no such file (got '{cert_dir / 'missing.crt'}')",
        "  --workers: must be at least 1 (got 0)",
    ]


def test_rotated_certificate_is_served_without_dropping_requests(
    tmp_path: Path, timekeeper: FakeTimekeeper
) -> None:
    cert_dir = tmp_path / "certs"
    generate_certs(cert_dir)
    old = leaf_der(cert_dir / "tls.crt")
    with serve_webhook(cert_dir, timekeeper.url) as webhook:
        failures: list[str] = []
        served_certs: set[bytes] = set()
        stop = threading.Event()
        counts = [0]

        def hammer() -> None:
            while not stop.is_set():
                connection = webhook.connect()
                try:
                    status, _ = webhook.post("/validate", review(pod()), connection)
                    assert isinstance(connection.sock, ssl.SSLSocket)
                    peer = connection.sock.getpeercert(binary_form=True)
                    assert peer is not None
                    served_certs.add(peer)
                    if status != 200:
                        failures.append(f"HTTP {status}")
                    counts[0] += 1
                except Exception as err:
                    failures.append(repr(err))
                finally:
                    connection.close()

        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for worker in workers:
            worker.start()
        wait_until(lambda: counts[0] >= 20, timeout=30, what="requests before rotation")
        generate_certs(
            cert_dir, "--ca-cert", str(cert_dir / "ca.crt"), "--ca-key", str(cert_dir / "ca.key")
        )
        new = leaf_der(cert_dir / "tls.crt")
        assert new != old
        wait_until(lambda: new in served_certs, timeout=30, what="rotated certificate served")
        before = counts[0]
        wait_until(lambda: counts[0] >= before + 20, timeout=30, what="requests after rotation")
        stop.set()
        for worker in workers:
            worker.join(10)
        assert failures == []
        assert served_certs == {old, new}
        # New connections now get the new certificate only.
        with (
            socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw,
            webhook.context().wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.getpeercert(binary_form=True) == new


def test_large_review_over_tls(served: Served) -> None:
    subject = pod(annotations={"big": "x" * 500_000})
    status, body = served.post("/mutate", review(subject))
    assert status == 200
    assert apply_and_check(subject, decode_patch(body))["spec"]["initContainers"][0]["name"] == (
        "gpushare-sidecar"
    )
