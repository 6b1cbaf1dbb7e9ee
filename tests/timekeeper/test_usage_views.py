"""`gpushare usage` against a real timekeeper app: the views, the output formats, idle pods
and a closed pipe."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from werkzeug.serving import make_server

from gpushare.cli import main
from tests.timekeeper.conftest import NOW, MakeApp, minute_report

BUDGETS = """\
defaults: {gpuHours: 100}
namespaces:
  team-a: {gpuHours: 500}
  ci: {period: "rolling:7d", gpuHours: 0.01}
"""


def measured(index: int, sm: float | None, **kwargs: Any) -> dict[str, Any]:
    body = minute_report(index, first=NOW - timedelta(hours=2), **kwargs)
    if sm is not None:
        body["smUtilization"] = sm
    return body


@pytest.fixture
def url(make_app: MakeApp) -> Iterator[str]:
    app = make_app(budgets=BUDGETS)
    client = app.test_client()
    for body in (
        measured(1, 0.02, pod="notebook", core=50),
        measured(2, 0.02, pod="notebook", core=50),
        measured(1, 0.5, pod="train", core=50),
        measured(1, 1.0, pod="job", namespace="ci", core=100),
    ):
        assert client.post("/api/v1/reports", json=body).status_code == 200
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["usage", *argv]) == 0
    return capsys.readouterr().out


def test_namespaces_table_tells_a_rolling_window_from_a_reset(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = run(capsys, "--url", url).splitlines()
    header = lines[0].split("  ")
    assert [cell.strip() for cell in header if cell.strip()][-4:] == [
        "PERIOD",
        "RESETS",
        "REFILLS",
        "WHEN EXHAUSTED",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "rolling:7d" in rows["ci"] and "never (sliding window)" in rows["ci"]
    assert "exhausted" in rows["ci"] and "2026-11-28T04:00:00Z" in rows["ci"]
    assert "month" in rows["team-a"] and "2026-12-01T00:00:00Z" in rows["team-a"]


def test_one_namespace_shows_allocated_used_and_idle(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(capsys, "team-a", "--url", url)
    assert "used 0.0090 GPU-hours where measured, idle 64%" in out
    pods = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.startswith(("notebook", "train"))
    }
    assert pods["notebook"][1:4] == ["0.0167", "0.0007", "96%"]
    assert pods["train"][1:4] == ["0.0083", "0.0083", "0%"]


@pytest.mark.parametrize("view", [[], ["team-a"], ["-A"], ["--idle"]], ids=str)
def test_json_output_is_the_api_answer(
    url: str, capsys: pytest.CaptureFixture[str], view: list[str]
) -> None:
    answer = json.loads(run(capsys, *view, "-o", "json", "--url", url))
    assert isinstance(answer, dict) and answer


def test_all_namespaces_csv_is_a_chargeback_export(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = list(csv.DictReader(io.StringIO(run(capsys, "-A", "-o", "csv", "--url", url))))
    assert [(row["namespace"], row["pod"], row["allocatedGpuHours"]) for row in rows] == [
        ("ci", "job", str(round(60 / 3600, 6))),
        ("team-a", "notebook", str(round(60 / 3600, 6))),
        ("team-a", "train", str(round(30 / 3600, 6))),
    ]


def test_idle_lists_pods_that_left_their_share_unused(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = run(capsys, "--idle", "--url", url).splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "POD", "VCUDA-CORE"]
    assert [line.split()[:3] for line in lines[1:]] == [["team-a", "notebook", "50"]]
    lines = run(capsys, "--idle", "--threshold", "0.01", "--url", url).splitlines()
    assert lines == [
        "no pod used less than 1% of its GPU share over the last 24 h (3 measured, "
        "0 without measurements)"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--idle", "--threshold", "2"],
            "gpushare usage: --threshold: must be a number in 0..1 (got 2)",
            id="threshold",
        ),
        pytest.param(
            ["--idle", "--window-hours", "0"],
            "gpushare usage: --window-hours: must be above 0 and at most 744 (got 0)",
            id="window",
        ),
        pytest.param(
            ["-A", "team-a"],
            "gpushare usage: -A: lists every namespace; give no NAMESPACE and no --idle with it",
            id="all-and-one",
        ),
    ],
)
def test_bad_usage_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", *argv]) == 2
    assert capsys.readouterr().err.strip() == message


def test_a_closed_pipe_ends_quietly(url: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpushare", "usage", "-A", "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first line (`| head -0`)
    errors = process.stderr.read().decode()
    assert process.wait(timeout=30) == 0
    assert errors == ""
