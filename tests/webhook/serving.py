"""Running `gpushare webhook` (gunicorn + TLS) and the certificate CLI as real processes."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.polling import wait_until

NOT_YET = (OSError, ssl.SSLError, http.client.HTTPException)
"""What a server that is still starting answers with."""


def generate_certs(out: Path, *extra: str) -> str:
    """`gpushare certs generate` for localhost and 127.0.0.1; returns the printed caBundle."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "certs",
            "generate",
            "--out",
            str(out),
            "--dns",
            "gpushare-webhook.gpushare-system.svc",
            "localhost",
            "--ip",
            "127.0.0.1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def leaf_der(cert_file: Path) -> bytes:
    """DER of the first (serving) certificate in a PEM chain file."""
    return x509.load_pem_x509_certificates(cert_file.read_bytes())[0].public_bytes(
        serialization.Encoding.DER
    )


@dataclass
class Served:
    port: int
    ca_file: Path
    process: subprocess.Popen[bytes]
    log_file: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def connect(self, timeout: float = 5.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context(), timeout=timeout
        )

    def post(
        self, path: str, body: Any, connection: http.client.HTTPSConnection | None = None
    ) -> tuple[int, Any]:
        own = connection is None
        connection = connection or self.connect()
        try:
            data = json.dumps(body).encode()
            connection.request("POST", path, data, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            if own:
                connection.close()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def serve_webhook(
    cert_dir: Path, timekeeper_url: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """Start `gpushare webhook` on an inherited loopback socket and wait for /healthz."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    log_file = cert_dir.parent / f"webhook-{port}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpushare",
                "webhook",
                "--bind-fd",
                str(listener.fileno()),
                "--cert",
                str(cert_dir / "tls.crt"),
                "--key",
                str(cert_dir / "tls.key"),
                "--timekeeper-url",
                timekeeper_url,
                "--log-format",
                "text",
                *args,
            ],
            pass_fds=[listener.fileno()],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    listener.close()
    served = Served(port, cert_dir / "ca.crt", process, log_file)
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"webhook exited:\n{served.log()}"
            connection = served.connect(timeout=1.0)
            try:
                connection.request("GET", "/healthz")
                return connection.getresponse().status == 200
            finally:
                connection.close()

        wait_until(healthy, timeout=30, what="webhook /healthz", ignoring=NOT_YET)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Timekeeper:
    """A real `gpushare timekeeper` process (its own process group, killable as a whole)."""

    process: subprocess.Popen[bytes]
    url: str
    log_file: Path

    def kill(self) -> None:
        """SIGKILL the gunicorn master and its workers: no goodbye, like a crashed node."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def post_json(self, path: str, body: Any, token: str) -> int:
        host, port = self.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request(
                "POST",
                path,
                json.dumps(body),
                {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


@contextmanager
def serve_timekeeper(
    directory: Path, budgets_yaml: str, tokens: dict[str, str], *extra: str
) -> Iterator[Timekeeper]:
    """Migrate a SQLite ledger, then serve the timekeeper on a free loopback port."""
    directory.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{directory / 'ledger.db'}"
    (directory / "budgets.yaml").write_text(budgets_yaml)
    entries = [{"token": token, "namespace": ns} for ns, token in tokens.items()]
    (directory / "tokens.yaml").write_text(json.dumps({"tokens": entries}))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
    gpushare = [sys.executable, "-m", "gpushare"]
    subprocess.run(
        [*gpushare, "db", "upgrade", "--database-url", database_url],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log_file = directory / "timekeeper.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                *gpushare,
                "timekeeper",
                *("--host", "127.0.0.1", "--port", "0", "--workers", "1", "--no-migrate"),
                *("--database-url", database_url),
                *("--budgets", str(directory / "budgets.yaml")),
                *("--tokens", str(directory / "tokens.yaml")),
                *extra,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    found: list[str] = []

    def listening() -> bool:
        assert process.poll() is None, log_file.read_text(errors="replace")
        match = _LISTENING.search(log_file.read_text(errors="replace"))
        if match:
            found.append(match.group(1))
        return bool(match)

    timekeeper: Timekeeper | None = None
    try:
        wait_until(listening, timeout=60, what="timekeeper listening", ignoring=NOT_YET)
        timekeeper = Timekeeper(process, found[0], log_file)
        yield timekeeper
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


_LISTENING = re.compile(r"timekeeper listening on (http://127\.0\.0\.1:\d+)")


@contextmanager
def serve_uncached_fail_open_webhook(
    directory: Path, timekeeper_url: str, timekeeper_token: str
) -> Iterator[Served]:
    """A fail-open webhook with fresh certificates that asks the timekeeper on every
    admission (no cache, as after a cold start), giving up on it after 1 s."""
    cert_dir = directory / "certs"
    generate_certs(cert_dir)
    token_file = directory / "webhook-token"
    token_file.write_text(timekeeper_token)
    env = {
        "GPUSHARE_WEBHOOK_BUDGET_CACHE_TTL_SECONDS": "0.001",
        "GPUSHARE_WEBHOOK_TIMEKEEPER_TIMEOUT_SECONDS": "1",
        "GPUSHARE_WEBHOOK_TIMEKEEPER_TOKEN_FILE": str(token_file),
    }
    with serve_webhook(
        cert_dir, timekeeper_url, "--failure-policy", "fail-open", env=env
    ) as served:
        yield served
