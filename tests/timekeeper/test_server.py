"""The real server: `gpushare timekeeper` under gunicorn in a subprocess.

kill -9 in the middle of a stream of reports loses nothing that was answered 2xx and
charges nothing twice; metrics are summed over the workers; `gpushare usage` reads it.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.timekeeper.servers import ServerProcess
from tests.timekeeper.test_concurrency import (
    expected_core_microseconds,
    odd_report,
    stored_totals,
)
from timekeeper import database
from timekeeper.models import usage_reports

TOKEN_A = "a-long-random-string-for-team-a"


def test_kill_9_loses_no_acknowledged_report(
    database_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    args = ["--database-url", database_url, "--allow-unauthenticated-reports", "--workers", "2"]
    server = server_factory(*args, name="first")
    pods, per_pod = 4, 150
    bodies = {p: [odd_report(p, i) for i in range(per_pod)] for p in range(pods)}
    acknowledged: list[tuple[str, int]] = []
    lock = threading.Lock()
    enough = threading.Event()

    def stream(pod: int) -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
        for body in bodies[pod]:
            try:
                connection.request(
                    "POST",
                    "/api/v1/reports",
                    body=json.dumps(body),
                    headers={"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                return  # the server is gone; an answer cut short is not an acknowledgement
            if 200 <= response.status < 300:
                with lock:
                    acknowledged.append((body["podUid"], body["sequence"]))
                    if len(acknowledged) >= 60:
                        enough.set()

    threads = [threading.Thread(target=stream, args=(p,)) for p in range(pods)]
    for thread in threads:
        thread.start()
    assert enough.wait(timeout=60), server.log()
    server.kill_hard()  # master and workers, mid-stream
    for thread in threads:
        thread.join(timeout=30)
    assert len(acknowledged) < pods * per_pod, "the stream ended before the kill"

    engine = database.make_engine(database_url)
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(usage_reports.c.pod_uid, usage_reports.c.sequence)
        ).all()
    engine.dispose()
    stored_keys = [tuple(row) for row in stored]
    assert set(acknowledged) <= set(stored_keys)
    assert len(stored_keys) == len(set(stored_keys))

    # The sidecars resend everything not acknowledged (and some that was): after restart
    # every report is there once and the totals are exact.
    restarted = server_factory(*args, name="restarted")
    everything = [body for pod_bodies in bodies.values() for body in pod_bodies]
    connection = http.client.HTTPConnection(restarted.host, restarted.port, timeout=10)
    for body in everything:
        connection.request(
            "POST",
            "/api/v1/reports",
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        answer = response.read()
        assert response.status == 200, answer
    connection.close()
    assert stored_totals(database_url) == (
        len(everything),
        len(everything),
        expected_core_microseconds(everything),
    )


def test_metrics_are_summed_over_workers(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(
        "--database-url",
        f"sqlite:///{tmp_path / 'tk.db'}",
        "--allow-unauthenticated-reports",
        "--workers",
        "2",
        "--threads",
        "1",
    )
    scrapes = set()
    for _ in range(40):  # a fresh connection each time, so both workers answer some
        status, _answer = server.request("GET", "/healthz")
        assert status == 200
    for _ in range(3):
        status, text = server.request("GET", "/metrics")
        assert status == 200
        scrapes.add(text)
    line = (
        'gpushare_timekeeper_http_requests_total{method="GET",route="/healthz",status="200"} 40.0'
    )
    for text in scrapes:
        assert line in text.decode()


def test_static_token_and_usage_command(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{token: {TOKEN_A}, namespace: team-a}}\n")
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("defaults: {gpuHours: 100}\nnamespaces:\n  team-a: {gpuHours: 500}\n")
    server = server_factory(
        "--database-url",
        f"sqlite:///{tmp_path / 'tk.db'}",
        "--tokens",
        str(tokens),
        "--budgets",
        str(budgets),
        "--workers",
        "1",
    )
    body: dict[str, Any] = odd_report(0, 0)
    assert server.request("POST", "/api/v1/reports", body)[0] == 401
    headers = {"Authorization": f"Bearer {TOKEN_A}"}
    assert server.request("POST", "/api/v1/reports", body, headers)[0] == 200
    other = {**odd_report(1, 0), "namespace": "team-b"}
    assert server.request("POST", "/api/v1/reports", other, headers)[0] == 403

    done = subprocess.run(
        [sys.executable, "-m", "gpushare", "usage", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "STATE", "USED"]
    assert lines[1].split()[:2] == ["team-a", "in-budget"]
    assert "500.00" in lines[1]

    done = subprocess.run(
        [sys.executable, "-m", "gpushare", "usage", "team-a", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pod-0" in done.stdout
    assert TOKEN_A not in server.log()

    done = subprocess.run(
        [sys.executable, "-m", "gpushare", "usage", "Bad_Name", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "HTTP 400: namespace: must be a namespace name" in done.stderr
