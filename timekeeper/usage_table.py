"""`gpushare usage`: budgets and use read from the timekeeper's API, printed as a table."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
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


def _optional_hours(value: Any) -> str:
    return "-" if value is None else f"{value:,.4f}"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


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


def render_csv(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if cell is None else cell for cell in row] for row in rows])
    return out.getvalue().rstrip("\n")


@dataclass(frozen=True)
class Table:
    """One table two ways: text cells for people, raw values for CSV."""

    header: list[str]
    text_rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[Any]]

    def render(self, output: str) -> str:
        if output == "csv":
            return render_csv(self.csv_header, self.csv_rows)
        return render_table(self.header, self.text_rows)


def namespaces_table(statuses: list[dict[str, Any]]) -> Table:
    """Budget and use of each namespace. A rolling window never resets: RESETS says so, and
    REFILLS says when an exhausted namespace gets GPU time back."""
    header = [
        "NAMESPACE",
        "STATE",
        "USED GPU-H",
        "BUDGET GPU-H",
        "REMAINING",
        "BURN/DAY",
        "PROJECTED",
        "PERIOD",
        "RESETS",
        "REFILLS",
        "WHEN EXHAUSTED",
    ]
    text_rows = []
    csv_rows = []
    for status in statuses:
        name = status["namespace"]
        period = status.get("period", "")
        rolling = period.startswith("rolling")
        resets = "never (sliding window)" if rolling else status["periodEnd"]
        text_rows.append(
            [
                name,
                status["state"],
                _hours(status["usedGpuHours"]),
                _hours(status["budgetGpuHours"]),
                _hours(status["remainingGpuHours"]),
                _hours(status["burnRateGpuHoursPerDay"]),
                _hours(status["projectedGpuHours"]),
                period or "-",
                resets,
                status.get("refillsAt") or "-",
                status["whenExhausted"],
            ]
        )
        csv_rows.append(
            [
                status["namespace"],
                status["state"],
                status["usedGpuHours"],
                status["budgetGpuHours"],
                status["remainingGpuHours"],
                status["burnRateGpuHoursPerDay"],
                status["projectedGpuHours"],
                period,
                None if rolling else status["periodEnd"],
                status.get("refillsAt"),
                status["whenExhausted"],
            ]
        )
    csv_header = [
        "namespace",
        "state",
        "usedGpuHours",
        "budgetGpuHours",
        "remainingGpuHours",
        "burnRateGpuHoursPerDay",
        "projectedGpuHours",
        "period",
        "resetsAt",
        "refillsAt",
        "whenExhausted",
    ]
    return Table(header, text_rows, csv_header, csv_rows)


def pods_table(usages: list[dict[str, Any]], *, with_namespace: bool = False) -> Table:
    """Pods of usage answers: allocated (charged), used and idle GPU time."""
    several = with_namespace
    header = ["POD", "ALLOCATED GPU-H", "USED GPU-H", "IDLE", "REPORTS", "FIRST START", "LAST END"]
    csv_header = [
        "namespace",
        "pod",
        "podUid",
        "allocatedGpuHours",
        "usedGpuHours",
        "measuredGpuHours",
        "idleShare",
        "reports",
        "firstStart",
        "lastEnd",
    ]
    if several:
        header = ["NAMESPACE", *header]
    text_rows = []
    csv_rows = []
    for usage in usages:
        for row in usage["rows"]:
            cells = [
                row["pod"],
                f"{row['gpuHours']:,.4f}",
                _optional_hours(row.get("usedGpuHours")),
                _percent(row.get("idleShare")),
                str(row["reports"]),
                row["firstStart"],
                row["lastEnd"],
            ]
            text_rows.append([usage["namespace"], *cells] if several else cells)
            csv_rows.append(
                [
                    usage["namespace"],
                    row["pod"],
                    row["podUid"],
                    row["gpuHours"],
                    row.get("usedGpuHours"),
                    row.get("measuredGpuHours"),
                    row.get("idleShare"),
                    row["reports"],
                    row["firstStart"],
                    row["lastEnd"],
                ]
            )
    return Table(header, text_rows, csv_header, csv_rows)


def idle_table(answer: dict[str, Any]) -> Table:
    header = ["NAMESPACE", "POD", "VCUDA-CORE", "ALLOCATED GPU-H", "USED GPU-H", "USED", "LAST END"]
    csv_header = [
        "namespace",
        "pod",
        "podUid",
        "vcudaCore",
        "allocatedGpuHours",
        "measuredGpuHours",
        "usedGpuHours",
        "usedShare",
        "idleShare",
        "lastEnd",
    ]
    text_rows = [
        [
            pod["namespace"],
            pod["pod"],
            str(pod["vcudaCore"]),
            f"{pod['allocatedGpuHours']:,.4f}",
            f"{pod['usedGpuHours']:,.4f}",
            _percent(pod["usedShare"]),
            pod["lastEnd"],
        ]
        for pod in answer["pods"]
    ]
    csv_rows = [[pod[name] for name in csv_header] for pod in answer["pods"]]
    return Table(header, text_rows, csv_header, csv_rows)


@dataclass(frozen=True)
class UsageQuery:
    """What `gpushare usage` was asked."""

    namespace: str | None = None
    all_namespaces: bool = False
    idle: bool = False
    threshold: float = 0.1
    window_hours: float = 24.0
    output: str = "table"
    start: str | None = None
    end: str | None = None


def print_usage(
    base_url: str, query: UsageQuery | str | None, *, token: str | None, out: TextIO
) -> None:
    base = base_url.rstrip("/")
    if not isinstance(query, UsageQuery):
        query = UsageQuery(namespace=query)
    try:
        _print_usage(base, query, token=token, out=out)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise UsageClientError(
            f"{base}: the answer is not the timekeeper's API ({type(err).__name__}: {err}); "
            "is --url the timekeeper's base URL?"
        ) from err


def _range(query: UsageQuery) -> str:
    parts = {"group_by": "pod"}
    if query.start:
        parts["from"] = query.start
    if query.end:
        parts["to"] = query.end
    return urllib.parse.urlencode(parts)


def _emit(out: TextIO, query: UsageQuery, answer: Any, table: Table, empty: str) -> None:
    if query.output == "json":
        print(json.dumps(answer, indent=2), file=out)
    elif query.output == "csv":
        print(table.render("csv"), file=out)
    elif table.text_rows:
        print(table.render("table"), file=out)
    else:
        print(empty, file=out)


def _print_usage(base: str, query: UsageQuery, *, token: str | None, out: TextIO) -> None:
    if query.idle:
        parts = {"threshold": repr(query.threshold), "window_hours": repr(query.window_hours)}
        if query.namespace:
            parts["namespace"] = query.namespace
        answer = fetch_json(f"{base}/api/v1/idle?{urllib.parse.urlencode(parts)}", token=token)
        empty = (
            f"no pod used less than {query.threshold * 100:g}% of its GPU share over the last "
            f"{query.window_hours:g} h ({answer['measuredPods']} measured, "
            f"{answer['unmeasuredPods']} without measurements)"
        )
        _emit(out, query, answer, idle_table(answer), empty)
        return
    if query.all_namespaces:
        listing = fetch_json(f"{base}/api/v1/namespaces", token=token)
        usages = []
        for status in listing.get("namespaces", []):
            quoted = urllib.parse.quote(status["namespace"], safe="")
            usages.append(
                fetch_json(f"{base}/api/v1/namespaces/{quoted}/usage?{_range(query)}", token=token)
            )
        table = pods_table(usages, with_namespace=True)
        _emit(out, query, {"namespaces": usages}, table, "no use in the period")
        return
    if query.namespace is None:
        listing = fetch_json(f"{base}/api/v1/namespaces", token=token)
        statuses = listing.get("namespaces", [])
        _emit(
            out,
            query,
            listing,
            namespaces_table(statuses),
            "no namespace has a budget entry or use in its period",
        )
        return
    quoted = urllib.parse.quote(query.namespace, safe="")
    status = fetch_json(f"{base}/api/v1/namespaces/{quoted}", token=token)
    usage = fetch_json(f"{base}/api/v1/namespaces/{quoted}/usage?{_range(query)}", token=token)
    if query.output != "table":
        _emit(out, query, {"status": status, "usage": usage}, pods_table([usage]), "")
        return
    print(namespaces_table([status]).render("table"), file=out)
    print(file=out)
    used = usage.get("usedGpuHours")
    measured = (
        f"; used {used:,.4f} GPU-hours where measured, idle {_percent(usage.get('idleShare'))}"
        if used is not None
        else ""
    )
    print(f"use by pod from {usage['from']} to {usage['to']}{measured}:", file=out)
    if usage["rows"]:
        print(pods_table([usage]).render("table"), file=out)
    else:
        print("(no use in this period)", file=out)
