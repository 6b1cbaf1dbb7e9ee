"""`gpushare usage`: budgets and use read from the timekeeper's API, printed as a table."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO


class UsageClientError(Exception):
    """The timekeeper could not be asked, or did not answer as expected."""


def fetch_json(url: str, *, token: str | None = None, timeout_seconds: float = 10.0) -> Any:
    try:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("message", err.reason)
        except (ValueError, AttributeError):
            message = err.reason
        raise UsageClientError(f"{url}: HTTP {err.code}: {message}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise UsageClientError(f"{url}: cannot reach the timekeeper ({err})") from err
    try:
        return json.loads(body)
    except ValueError as err:
        raise UsageClientError(f"{url}: the answer is not JSON; is this the timekeeper?") from err


def check_url(url: str) -> str | None:
    """None when `url` can be a timekeeper's base URL, else the rule it breaks."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, like http://127.0.0.1:8080"
    if parts.query or parts.fragment:
        return "must be the timekeeper's base URL, without a query or fragment"
    return None


def _hours(value: Any) -> str:
    return "unlimited" if value is None else f"{value:,.2f}"


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            numeric = cell[:1].isdigit() or (cell[:1] == "-" and cell[1:2].isdigit())
            parts.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    return "\n".join([line(header)] + [line(row) for row in rows])


def namespaces_table(statuses: list[dict[str, Any]]) -> str:
    header = [
        "NAMESPACE",
        "STATE",
        "USED GPU-H",
        "BUDGET GPU-H",
        "REMAINING",
        "BURN/DAY",
        "PROJECTED",
        "PERIOD END",
        "WHEN EXHAUSTED",
    ]
    rows = [
        [
            status["namespace"],
            status["state"],
            _hours(status["usedGpuHours"]),
            _hours(status["budgetGpuHours"]),
            _hours(status["remainingGpuHours"]),
            _hours(status["burnRateGpuHoursPerDay"]),
            _hours(status["projectedGpuHours"]),
            status["periodEnd"],
            status["whenExhausted"],
        ]
        for status in statuses
    ]
    return render_table(header, rows)


def pods_table(usage: dict[str, Any]) -> str:
    header = ["POD", "GPU-HOURS", "REPORTS", "FIRST START", "LAST END"]
    rows = [
        [
            row["pod"],
            f"{row['gpuHours']:,.4f}",
            str(row["reports"]),
            row["firstStart"],
            row["lastEnd"],
        ]
        for row in usage["rows"]
    ]
    return render_table(header, rows)


def print_usage(base_url: str, namespace: str | None, *, token: str | None, out: TextIO) -> None:
    base = base_url.rstrip("/")
    try:
        _print_usage(base, namespace, token=token, out=out)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise UsageClientError(
            f"{base}: the answer is not the timekeeper's API ({type(err).__name__}: {err}); "
            "is --url the timekeeper's base URL?"
        ) from err


def _print_usage(base: str, namespace: str | None, *, token: str | None, out: TextIO) -> None:
    if namespace is None:
        listing = fetch_json(f"{base}/api/v1/namespaces", token=token)
        statuses = listing.get("namespaces", [])
        if not statuses:
            print("no namespace has a budget entry or use in its period", file=out)
            return
        print(namespaces_table(statuses), file=out)
        return
    quoted = urllib.parse.quote(namespace, safe="")
    status = fetch_json(f"{base}/api/v1/namespaces/{quoted}", token=token)
    print(namespaces_table([status]), file=out)
    usage = fetch_json(f"{base}/api/v1/namespaces/{quoted}/usage?group_by=pod", token=token)
    print(file=out)
    print(f"use by pod from {usage['from']} to {usage['to']}:", file=out)
    if usage["rows"]:
        print(pods_table(usage), file=out)
    else:
        print("(no use in this period)", file=out)
