"""The sidecar process against the in-process fake timekeeper: delivery rules at the edges
(5xx on demand, 4xx, token rotation, bad environment) that the real timekeeper cannot be
made to produce on demand."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.intervals import parse_time
from tests.polling import wait_until
from tests.sidecar.fake_timekeeper import FakeTimekeeper
from tests.sidecar.harness import (
    Held,
    Pod,
    SidecarProcess,
    assert_covers,
    now_utc,
    spooled,
)

TOKEN = "token-team-a"


@pytest.fixture
def fake() -> Iterator[FakeTimekeeper]:
    timekeeper = FakeTimekeeper({TOKEN: "team-a"})
    timekeeper.start()
    yield timekeeper
    timekeeper.stop()


def held(fake: FakeTimekeeper, pod: Pod) -> list[Held]:
    return [
        Held(r["sequence"], parse_time(r["start"]), parse_time(r["end"]))
        for r in fake.held(pod.uid)
    ]


def test_reports_every_period_and_delivers_the_last_interval_on_sigterm(
    tmp_path: Path, fake: FakeTimekeeper
) -> None:
    pod = Pod(tmp_path, fake.url, TOKEN)
    started = now_utc()
    with SidecarProcess(pod) as sidecar:
        wait_until(lambda: len(fake.held(pod.uid)) >= 3, timeout=10, what="3 intervals")
        stopped = now_utc()
        assert sidecar.terminate_and_wait() == 0
    reports = fake.held(pod.uid)
    assert [r["sequence"] for r in reports] == list(range(1, len(reports) + 1))
    assert all(r["vcudaCore"] == 50 and r["vcudaMemory"] == 15 for r in reports)
    assert all("smUtilization" not in r for r in reports), "GPUSHARE_NVML=off measures nothing"
    assert_covers(held(fake, pod), lifetime_start=started, lifetime_end=stopped, period=0.2)
    assert parse_time(reports[-1]["end"]) >= stopped, "the interval open at SIGTERM was sent"
    assert spooled(pod.spool_dir) == []
    assert fake.refusals == []


def test_5xx_answers_are_retried_in_order_until_accepted(
    tmp_path: Path, fake: FakeTimekeeper
) -> None:
    pod = Pod(tmp_path, fake.url, TOKEN)
    started = now_utc()
    with SidecarProcess(pod) as sidecar:
        wait_until(lambda: len(fake.held(pod.uid)) >= 1, timeout=10, what="a first interval")
        fake.fail_with = 503
        wait_until(lambda: len(spooled(pod.spool_dir)) >= 4, timeout=10, what="a backlog")
        fake.fail_with = None
        wait_until(lambda: not spooled(pod.spool_dir), timeout=10, what="the backlog sent")
        stopped = now_utc()
        assert sidecar.terminate_and_wait() == 0
        assert "HTTP 503" in sidecar.log()
    assert_covers(held(fake, pod), lifetime_start=started, lifetime_end=stopped, period=0.2)


def test_a_refused_interval_is_dead_lettered_and_the_next_ones_go_on(
    tmp_path: Path, fake: FakeTimekeeper
) -> None:
    pod = Pod(tmp_path, fake.url, TOKEN, extra_env={"GPUSHARE_AUTH_GRACE_SECONDS": "0.5"})
    with SidecarProcess(pod) as sidecar:
        wait_until(lambda: len(fake.held(pod.uid)) >= 1, timeout=10, what="a first interval")
        fake.tokens = {}  # every report now gets 401
        rejected = pod.spool_dir / "rejected"
        wait_until(lambda: any(rejected.glob("*.json")), timeout=10, what="a dead letter")
        fake.tokens = {TOKEN: "team-a"}
        count = len(fake.held(pod.uid))
        wait_until(lambda: len(fake.held(pod.uid)) > count + 2, timeout=10, what="delivery again")
        assert sidecar.terminate_and_wait() == 0
        log = sidecar.log()
    letter = json.loads(sorted(rejected.glob("*.json"))[0].read_text())
    assert letter["reason"] == "HTTP 401: unauthenticated: unknown token"
    assert "moving it to rejected/" in log
    assert TOKEN not in log, "the token is never logged"
    delivered = {r["sequence"] for r in fake.held(pod.uid)}
    assert letter["sequence"] not in delivered


def test_a_rotated_token_file_is_read_again(tmp_path: Path, fake: FakeTimekeeper) -> None:
    pod = Pod(tmp_path, fake.url, TOKEN)
    with SidecarProcess(pod) as sidecar:
        wait_until(lambda: len(fake.held(pod.uid)) >= 1, timeout=10, what="a first interval")
        fake.tokens = {"rotated-token": "team-a"}
        replacement = tmp_path / "token.new"
        replacement.write_text("rotated-token\n")
        replacement.replace(tmp_path / "token")  # kubelet swaps the file atomically too
        count = len(fake.held(pod.uid))
        wait_until(lambda: len(fake.held(pod.uid)) > count + 2, timeout=10, what="new token")
        assert sidecar.terminate_and_wait() == 0
    assert not list((pod.spool_dir / "rejected").glob("*.json"))


def test_sigterm_while_the_timekeeper_hangs_exits_within_the_deadline(
    tmp_path: Path, fake: FakeTimekeeper
) -> None:
    pod = Pod(tmp_path, fake.url, TOKEN)
    with SidecarProcess(pod) as sidecar:
        wait_until(lambda: len(fake.held(pod.uid)) >= 1, timeout=10, what="a first interval")
        fake.fail_with = 500
        wait_until(lambda: len(spooled(pod.spool_dir)) >= 2, timeout=10, what="a backlog")
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(timeout=5) == 0
        assert "left in the spool" in sidecar.log()
    assert len(spooled(pod.spool_dir)) >= 2


def test_sigterm_during_a_request_ends_within_the_deadline_and_keeps_the_interval(
    tmp_path: Path, fake: FakeTimekeeper
) -> None:
    """A request the timekeeper leaves unanswered is cut at the stop deadline, counted from
    the signal, not after the HTTP timeout (20 s here); its interval stays spooled."""
    deadline_seconds = 1.0
    pod = Pod(
        tmp_path,
        fake.url,
        TOKEN,
        extra_env={
            "GPUSHARE_HTTP_TIMEOUT_SECONDS": "20",
            "GPUSHARE_SHUTDOWN_DEADLINE_SECONDS": str(deadline_seconds),
        },
    )
    with SidecarProcess(pod) as sidecar:
        wait_until(lambda: len(fake.held(pod.uid)) >= 1, timeout=10, what="a first interval")
        fake.stall = True
        wait_until(lambda: fake.stalled >= 1, timeout=10, what="a request left unanswered")
        waiting = {path.name for path in spooled(pod.spool_dir)}
        assert waiting, "the interval in flight is spooled"
        signalled = time.monotonic()
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(timeout=30) == 0
        took = time.monotonic() - signalled
        # The deadline, plus room for closing the last interval and the exit on a busy machine.
        assert took < deadline_seconds + 1.5, f"stopped {took:.1f} s after SIGTERM"
        assert "left in the spool" in sidecar.log()
    assert waiting <= {path.name for path in spooled(pod.spool_dir)}
    assert not list((pod.spool_dir / "rejected").glob("*.json"))


def test_an_https_timekeeper_is_verified_against_the_given_ca(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "certs",
            "generate",
            "--out",
            str(certs),
            "--dns",
            "localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "tls.crt", certs / "tls.key")
    fake = FakeTimekeeper({TOKEN: "team-a"}, tls=context)
    fake.start()
    try:
        trusted = Pod(
            tmp_path / "trusted",
            fake.url,
            TOKEN,
            extra_env={"GPUSHARE_TIMEKEEPER_CA_FILE": str(certs / "ca.crt")},
        )
        untrusted = Pod(tmp_path / "untrusted", fake.url, TOKEN)
        for pod in (trusted, untrusted):
            pod.tmp_path.mkdir()
        with SidecarProcess(trusted) as good, SidecarProcess(untrusted) as bad:
            wait_until(lambda: len(fake.held(trusted.uid)) >= 2, timeout=10, what="TLS delivery")
            wait_until(
                lambda: "CERTIFICATE_VERIFY_FAILED" in bad.log(),
                timeout=10,
                what="the unknown CA refused",
            )
            assert good.terminate_and_wait() == 0
            assert bad.terminate_and_wait() == 0
        assert fake.held(untrusted.uid) == []
        assert spooled(untrusted.spool_dir), "what could not be sent stays spooled"
    finally:
        fake.stop()


@pytest.mark.parametrize(
    ("changes", "expected_lines"),
    [
        pytest.param(
            {"GPUSHARE_TIMEKEEPER_URL": "", "GPUSHARE_POD_UID": ""},
            [
                "GPUSHARE_TIMEKEEPER_URL: required, must be an http:// or https:// URL with a "
                "host and no query (got nothing)",
                "GPUSHARE_POD_UID: required, must be a UUID such as "
                "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55 (got nothing)",
            ],
            id="two-missing-both-named",
        ),
        pytest.param(
            {"GPUSHARE_VCUDA_CORE": "half", "GPUSHARE_REPORT_INTERVAL_SECONDS": "0"},
            [
                "GPUSHARE_VCUDA_CORE: must be a whole number of vcuda-core units in 1..100000 "
                "(1 = 1 % of a GPU) (got 'half')",
                "GPUSHARE_REPORT_INTERVAL_SECONDS: must be a number of seconds in [0.05, 3600] "
                "(got '0')",
            ],
            id="malformed-core-and-period",
        ),
        pytest.param(
            {"GPUSHARE_TOKEN_FILE": "/nonexistent/token"},
            [
                "GPUSHARE_TOKEN_FILE: must be a readable file when GPUSHARE_TOKEN is unset, "
                "No such file or directory (got '/nonexistent/token')"
            ],
            id="token-file-missing",
        ),
    ],
)
def test_a_bad_environment_stops_the_sidecar_naming_every_variable(
    tmp_path: Path, changes: dict[str, str], expected_lines: list[str]
) -> None:
    pod = Pod(tmp_path, "http://127.0.0.1:9", TOKEN)
    env = pod.environ()
    env.update(changes)
    result = subprocess.run(
        [sys.executable, "-m", "gpushare", "sidecar"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert result.stderr.splitlines()[0] == "gpushare sidecar: invalid sidecar environment:"
    assert lines == expected_lines
