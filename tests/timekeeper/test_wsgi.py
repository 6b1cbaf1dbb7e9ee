"""The production path without the CLI: `timekeeper.wsgi:app` under plain gunicorn, configured
from the environment only; and the CLI server with ServiceAccount-token auth."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.timekeeper.servers import ServerProcess
from tests.timekeeper.test_auth import KEY, jwks, sa_token
from tests.timekeeper.test_concurrency import odd_report
from timekeeper import database


def test_wsgi_module_reports_bad_environment(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GPUSHARE_DATABASE_URL": "mysql://nope",
        "GPUSHARE_CLOCK_SKEW_SECONDS": "soon",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import timekeeper.wsgi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "timekeeper: GPUSHARE_DATABASE_URL: must be a sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST/DB URL (got 'mysql://nope')",
        "timekeeper: GPUSHARE_CLOCK_SKEW_SECONDS: must be a number of seconds (got 'soon')",
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param(
            "GPUSHARE_TOKENS_FILE",
            'tokens:\n  - {token: "a-long-random-string", namespace: team-a}\n'
            '  - {token: "a-long-random-string", namespace: team-b}\n',
            "timekeeper: {path}: tokens[1].token: the same token is listed twice",
            id="tokens-listed-twice",
        ),
        pytest.param(
            "GPUSHARE_BUDGETS_FILE",
            "defaults: {gpuHours: ten}\n",
            "timekeeper: defaults.gpuHours: must be a number >= 0 or 'unlimited' (got 'ten')",
            id="budgets-invalid",
        ),
    ],
)
def test_wsgi_module_reports_bad_files_without_a_traceback(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(content)
    env = {
        **os.environ,
        "GPUSHARE_DATABASE_URL": f"sqlite:///{tmp_path / 'tk.db'}",
        "GPUSHARE_ALLOW_UNAUTHENTICATED_REPORTS": "true",
        name: str(path),
    }
    done = subprocess.run(
        [sys.executable, "-c", "import timekeeper.wsgi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr.splitlines()) == (2, [message.format(path=path)])


def test_plain_gunicorn_serves_the_wsgi_app(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tk.db'}"
    database.upgrade(url)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "GPUSHARE_DATABASE_URL": url,
        "GPUSHARE_ALLOW_UNAUTHENTICATED_REPORTS": "true",
        "GPUSHARE_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "python:timekeeper.gunicorn_hooks",
                "-w",
                "2",
                "--threads",
                "2",
                "-b",
                "127.0.0.1:0",
                "--no-control-socket",
                "timekeeper.wsgi:app",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(process, log_path)
    try:
        deadline = time.monotonic() + 30
        match = None
        while match is None and time.monotonic() < deadline:
            assert process.poll() is None, server.log()
            match = re.search(r"timekeeper listening on http://([0-9.]+):(\d+)", server.log())
            time.sleep(0.05)
        assert match is not None, server.log()
        server.host, server.port = match.group(1), int(match.group(2))
        status = 0
        while status != 200 and time.monotonic() < deadline:
            try:
                status = server.request("GET", "/readyz", timeout=2)[0]
            except OSError:
                time.sleep(0.05)
        assert status == 200
        assert server.request("POST", "/api/v1/reports", odd_report(0, 0))[0] == 200
        status, answer = server.request("GET", "/api/v1/namespaces/team-a")
        assert (status, answer["usedGpuHours"] > 0) == (200, True)
        _, text = server.request("GET", "/metrics")
        assert b'gpushare_timekeeper_reports_total{outcome="stored"} 1.0' in text
        assert list(metrics_dir.glob("*.db"))  # the workers share their values here
    finally:
        server.stop()


def test_server_with_service_account_tokens(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(jwks(("k1", KEY))))
    server = server_factory(
        "--database-url",
        f"sqlite:///{tmp_path / 'tk.db'}",
        "--jwks-file",
        str(keys),
        "--token-issuer",
        "https://kubernetes.default.svc.cluster.local",
        "--workers",
        "1",
    )
    body = {**odd_report(0, 0), "pod": "train-0", "podUid": "uid-0"}
    own = {"Authorization": f"Bearer {sa_token(pod='train-0', uid='uid-0')}"}
    other = {"Authorization": f"Bearer {sa_token(namespace='team-b', pod='x', uid='y')}"}
    assert server.request("POST", "/api/v1/reports", body, own)[0] == 200
    assert server.request("POST", "/api/v1/reports", body, other)[0] == 403
    assert server.request("POST", "/api/v1/reports", body)[0] == 401
