"""The webhook under gunicorn + TLS against the real timekeeper process, killed mid-run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from tests.webhook.builders import apply_and_check, decode_patch, pod, review
from tests.webhook.serving import (
    Served,
    Timekeeper,
    generate_certs,
    serve_timekeeper,
    serve_webhook,
    wait_until,
)

pytestmark = pytest.mark.slow

BUDGETS = """
defaults: {period: month, gpuHours: 100, whenExhausted: deprioritize}
namespaces:
  busy: {gpuHours: 1, warnAtPercent: 10}
  interns: {gpuHours: 0, whenExhausted: deny}
  overdrawn: {gpuHours: 0}
  research: {gpuHours: unlimited}
"""
BUSY_TOKEN = "busy-token-0123456789abcdef0123456789"
FAST_CACHE = {
    "GPUSHARE_WEBHOOK_BUDGET_CACHE_TTL_SECONDS": "0.2",
    "GPUSHARE_WEBHOOK_TIMEKEEPER_TIMEOUT_SECONDS": "0.5",
}


@pytest.fixture
def webhook_env(tmp_path: Path) -> dict[str, str]:
    token_file = tmp_path / "webhook-token"
    token_file.write_text(WEBHOOK_TOKEN)
    return {**FAST_CACHE, "GPUSHARE_WEBHOOK_TIMEKEEPER_TOKEN_FILE": str(token_file)}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


WEBHOOK_TOKEN = "webhook-token-0123456789abcdef01234567"


@pytest.fixture
def timekeeper(tmp_path: Path) -> Iterator[Timekeeper]:
    tokens = {"busy": BUSY_TOKEN, "gpushare-system": WEBHOOK_TOKEN}
    # Reads need a token too: the webhook presents its own.
    with serve_timekeeper(
        tmp_path / "timekeeper", BUDGETS, tokens, "--read-requires-token"
    ) as server:
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        report = {
            "podUid": "0b0e5c1e-0000-4000-8000-000000000001",
            "pod": "train-0",
            "namespace": "busy",
            "sequence": 1,
            "start": _rfc3339(end - timedelta(minutes=30)),
            "end": _rfc3339(end),
            "vcudaCore": 50,
            "vcudaMemory": 4,
        }
        # 0.25 GPU-hours of a 1 GPU-hour budget: past the 10 % warning line.
        assert server.post_json("/api/v1/reports", report, BUSY_TOKEN) in (200, 201)
        yield server


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    generate_certs(tmp_path / "certs")
    return tmp_path / "certs"


def mutate(webhook: Served, namespace: str) -> dict[str, Any]:
    subject = pod(namespace=namespace)
    status, body = webhook.post("/mutate", review(subject, namespace=namespace))
    assert status == 200, body
    answer: dict[str, Any] = body["response"]
    if answer["allowed"]:
        patched = apply_and_check(subject, decode_patch(body))
        answer["patched"] = {
            "state": patched["metadata"]["annotations"]["gpushare.io/budget-state"],
            "class": patched["spec"]["priorityClassName"],
        }
    return answer


def test_budget_states_from_the_real_timekeeper(
    timekeeper: Timekeeper, cert_dir: Path, webhook_env: dict[str, str]
) -> None:
    with serve_webhook(cert_dir, timekeeper.url, env=webhook_env) as webhook:
        seen = {
            namespace: mutate(webhook, namespace).get("patched")
            for namespace in ("team-a", "busy", "overdrawn", "research")
        }
        assert seen == {
            "team-a": {"state": "in-budget", "class": "gpushare-standard"},
            "busy": {"state": "warning", "class": "gpushare-standard"},
            "overdrawn": {"state": "exhausted", "class": "gpushare-overbudget"},
            "research": {"state": "unlimited", "class": "gpushare-standard"},
        }
        denied = mutate(webhook, "interns")
        assert denied["allowed"] is False
        refill = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        refill = (refill + timedelta(days=32)).replace(day=1)
        assert denied["status"]["message"] == (
            'pod rejected: namespace "interns" has used 0.00 of its 0 GPU-hours budget and'
            " refuses new GPU pods when it is exhausted; the budget refills at"
            f" {_rfc3339(refill)}"
        )


@pytest.mark.parametrize(
    ("policy", "expected_unknown"),
    [
        pytest.param(
            "fail-open",
            {"allowed": True, "state": "in-budget", "class": "gpushare-standard"},
            id="fail-open",
        ),
        pytest.param(
            "fail-closed",
            {"allowed": False, "state": None, "class": None},
            id="fail-closed",
        ),
    ],
)
def test_timekeeper_killed_mid_run(
    timekeeper: Timekeeper,
    cert_dir: Path,
    webhook_env: dict[str, str],
    policy: str,
    expected_unknown: dict[str, Any],
) -> None:
    env = {**webhook_env, "GPUSHARE_WEBHOOK_FAILURE_POLICY": policy}
    with serve_webhook(cert_dir, timekeeper.url, env=env) as webhook:
        assert mutate(webhook, "busy")["patched"]["state"] == "warning"
        answers: list[tuple[float, dict[str, Any]]] = []
        errors: list[str] = []
        stop = threading.Event()

        def keep_admitting() -> None:
            connection = webhook.connect()
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status, body = webhook.post(
                        "/mutate", review(pod(namespace="busy"), namespace="busy"), connection
                    )
                    if status != 200:
                        errors.append(f"HTTP {status}")
                    answers.append((time.monotonic() - started, body["response"]))
                except Exception as err:
                    errors.append(repr(err))
                    connection.close()
                    connection = webhook.connect()
            connection.close()

        admitter = threading.Thread(target=keep_admitting)
        admitter.start()
        try:
            wait_until(lambda: len(answers) >= 10, timeout=30, what="admissions before the kill")
            timekeeper.kill()
            killed_at, kill_time = len(answers), time.monotonic()
            # Long enough for cache entries to expire (TTL 0.2 s) and refreshes to fail.
            wait_until(
                lambda: len(answers) >= killed_at + 50 and time.monotonic() > kill_time + 1.0,
                timeout=60,
                what="admissions after the kill",
            )
        finally:
            stop.set()
            admitter.join(30)
        assert errors == []
        after = [response for _, response in answers[killed_at:]]
        # A namespace seen before the kill keeps its last known state (stale cache).
        assert all(response["allowed"] for response in after)
        states = {
            jsonpatch.apply_patch(pod(namespace="busy"), decode_patch({"response": response}))[
                "metadata"
            ]["annotations"]["gpushare.io/budget-state"]
            for response in after
        }
        assert states == {"warning"}
        warned = "gpushare: budget state from cache; the timekeeper is not answering"
        assert any(warned in response.get("warnings", []) for response in after)
        # Bounded waits: no admission took longer than the timeout plus slack for a busy host.
        assert max(seconds for seconds, _ in answers) < 0.5 + 2.0

        # A namespace never seen before: the failure policy decides, at once.
        unknown = mutate(webhook, "team-new")
        got = {
            "allowed": unknown["allowed"],
            "state": unknown.get("patched", {}).get("state"),
            "class": unknown.get("patched", {}).get("class"),
        }
        assert got == expected_unknown
        if policy == "fail-closed":
            assert unknown["status"]["message"].startswith(
                'pod rejected: the GPU budget of namespace "team-new" cannot be checked'
                " (timekeeper unreachable"
            )
            assert unknown["status"]["message"].endswith(
                "the webhook's failure policy is fail-closed"
            )
        else:
            [warning] = unknown["warnings"]
            assert warning.startswith(
                'gpushare: the GPU budget of namespace "team-new" is unknown (timekeeper'
                " unreachable"
            )
            assert warning.endswith(
                "; admitted as in-budget by the webhook's failure policy fail-open"
            )
        assert webhook.process.poll() is None, "the webhook keeps serving"


def test_without_a_token_the_failure_policy_decides(timekeeper: Timekeeper, cert_dir: Path) -> None:
    with serve_webhook(cert_dir, timekeeper.url, env=FAST_CACHE) as webhook:
        answer = mutate(webhook, "team-a")
    assert answer["allowed"] is True
    assert answer["warnings"] == [
        'gpushare: the GPU budget of namespace "team-a" is unknown (timekeeper answered HTTP'
        ' 401 for namespace "team-a"); admitted as in-budget by the webhook\'s failure policy'
        " fail-open"
    ]
