"""The usage pages: read-only HTML, rendered on the server, SVG charts, no JavaScript.

- `/ui/`: every namespace with state, a budget bar (use, warning level, projection), burn
  rate, projection, period and when it resets or refills;
- `/ui/namespaces/<ns>`: one namespace's daily use in its period against its budget, its top
  pods by allocated GPU-hours with what they really used, and its idle share.

The pages answer from the same use cases as the JSON API, and need a token exactly when the
API's reads do (`--read-requires-token`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from flask import Flask, render_template_string
from markupsafe import Markup

from timekeeper.accounting import Accounting
from timekeeper.charts import STATE_COLOURS, Day, budget_bar, daily_chart
from timekeeper.ledger import Ledger
from timekeeper.policy_source import PolicySource
from timekeeper.states import BudgetStatus, rfc3339

TOP_PODS: Final = 10
MAX_DAYS: Final = 400

_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; } th, td { padding: .3rem .6rem; text-align: left; }
th { border-bottom: 2px solid #ccc; } td { border-bottom: 1px solid #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state { color: #fff; padding: .1rem .4rem; border-radius: .3rem; font-size: .85rem; }
.facts { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
.muted { color: #666; font-size: .9rem; }
"""

_LIST: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GPU budgets — gpushare</title>
<style>{{ style }}</style></head><body>
<h1>GPU budgets</h1>
<p class="muted">As of {{ now }}. One GPU-hour is one whole GPU for one hour.</p>
{% if rows %}
<table id="namespaces">
<thead><tr><th>Namespace</th><th>State</th><th>Budget</th><th>Used GPU-h</th>
<th>Budget GPU-h</th><th>Burn / day</th><th>Projected</th><th>Period</th>
<th>Resets</th><th>Refills</th></tr></thead>
<tbody>
{% for row in rows %}
<tr data-namespace="{{ row.name }}">
<td><a href="{{ row.link }}">{{ row.name }}</a></td>
<td><span class="state" style="background: {{ row.colour }}">{{ row.state }}</span></td>
<td>{{ row.bar }}</td>
<td class="num">{{ row.used }}</td><td class="num">{{ row.budget }}</td>
<td class="num">{{ row.burn }}</td><td class="num">{{ row.projected }}</td>
<td>{{ row.period }}</td><td>{{ row.resets }}</td><td>{{ row.refills }}</td>
</tr>
{% endfor %}
</tbody></table>
{% else %}
<p>No namespace has a budget entry or use in its period yet.</p>
{% endif %}
</body></html>
"""

_NAMESPACE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ name }} — GPU budget — gpushare</title>
<style>{{ style }}</style></head><body>
<p><a href="{{ back }}">All namespaces</a></p>
<h1>{{ name }} <span class="state" style="background: {{ colour }}">{{ state }}</span></h1>
<div class="facts" id="facts">
<span>Used</span><span>{{ used }} of {{ budget }} GPU-hours</span>
<span>Budget</span><span>{{ bar }}</span>
<span>Burn rate</span><span>{{ burn }} GPU-hours a day</span>
<span>Projected</span><span>{{ projected }} GPU-hours by {{ period_end }}</span>
<span>Period</span><span>{{ period }} ({{ period_start }} to {{ period_end }})</span>
<span>Resets</span><span>{{ resets }}</span>
<span>Refills</span><span>{{ refills }}</span>
<span>When exhausted</span><span>{{ when_exhausted }}</span>
<span>Idle share</span><span id="idle">{{ idle }}</span>
</div>
<h2>Daily use this period</h2>
{{ chart }}
<p class="muted">Bars: GPU-hours each day ({{ zone }}). Line: use so far; dashed: the budget.</p>
<h2>Top pods</h2>
{% if pods %}
<table id="pods">
<thead><tr><th>Pod</th><th>Allocated GPU-h</th><th>Used GPU-h</th><th>Idle</th>
<th>Reports</th><th>Last report</th></tr></thead>
<tbody>
{% for pod in pods %}
<tr><td>{{ pod.name }}</td><td class="num">{{ pod.allocated }}</td>
<td class="num">{{ pod.used }}</td><td class="num">{{ pod.idle }}</td>
<td class="num">{{ pod.reports }}</td><td>{{ pod.last }}</td></tr>
{% endfor %}
</tbody></table>
{% else %}
<p>No pod used GPU time in this period.</p>
{% endif %}
<p class="muted">Allocated is what is charged (the share held); used is what the pod's kernels
really ran, where measured. As of {{ now }}.</p>
</body></html>
"""


def _hours(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:,.2f}"


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value * 100:.0f}%"


def _resets(status: BudgetStatus) -> str:
    if status.period.startswith("rolling"):
        return "never: a sliding window"
    return rfc3339(status.period_end)


def _refills(status: BudgetStatus) -> str:
    if status.refills_at is not None:
        return rfc3339(status.refills_at)
    return "never (a budget of 0)" if status.state == "exhausted" else "-"


def _days(start: datetime, end: datetime, zone: ZoneInfo) -> list[date]:
    first, last = (
        start.astimezone(zone).date(),
        (end - timedelta(microseconds=1)).astimezone(zone).date(),
    )
    count = min((last - first).days + 1, MAX_DAYS)
    return [first + timedelta(days=offset) for offset in range(max(count, 0))]


def register_pages(
    app: Flask,
    *,
    accounting: Accounting,
    ledger: Ledger,
    policy_source: PolicySource,
    clock: Callable[[], datetime],
    require_reader: Callable[[], None],
) -> None:
    """Add `/ui/` and `/ui/namespaces/<namespace>` to `app`."""

    def bar(status: BudgetStatus, width: int = 240) -> Markup:
        budget = policy_source.current().budget_for(status.namespace)
        return Markup(
            budget_bar(
                used=status.used_gpu_hours,
                budget=status.budget_gpu_hours,
                projected=status.projected_gpu_hours,
                warn_at_percent=budget.warn_at_percent,
                state=status.state,
                width=width,
            )
        )

    @app.get("/ui/")
    def usage_page() -> str:
        require_reader()
        rows: list[dict[str, Any]] = [
            {
                "name": status.namespace,
                "link": f"namespaces/{status.namespace}",
                "state": status.state,
                "colour": STATE_COLOURS.get(status.state, "#555"),
                "bar": bar(status),
                "used": _hours(status.used_gpu_hours),
                "budget": _hours(status.budget_gpu_hours),
                "burn": _hours(status.burn_rate_gpu_hours_per_day),
                "projected": _hours(status.projected_gpu_hours),
                "period": status.period,
                "resets": _resets(status),
                "refills": _refills(status),
            }
            for status in accounting.statuses()
        ]
        return render_template_string(_LIST, style=_STYLE, rows=rows, now=rfc3339(clock()))

    @app.get("/ui/namespaces/<namespace>")
    def namespace_page(namespace: str) -> str:
        require_reader()
        status = accounting.status(namespace)  # validates the name
        budget = policy_source.current().budget_for(namespace)
        zone = ZoneInfo(budget.timezone)
        now = clock()
        start, end = status.period_start, min(status.period_end, now)
        by_day = {
            row.key: row.gpu_seconds / 3600
            for row in ledger.usage(namespace, start, end, group_by="day", day_zone=zone)
        }
        days = [
            Day(day.isoformat(), by_day.get(day.isoformat(), 0.0))
            for day in _days(start, end, zone)
        ]
        pods = ledger.usage(namespace, start, end, group_by="pod")
        used = sum(row.used_gpu_seconds for row in pods)
        measured = sum(row.measured_gpu_seconds for row in pods)
        idle = None if measured <= 0 else max(0.0, 1.0 - used / measured)
        top = sorted(pods, key=lambda row: -row.gpu_seconds)[:TOP_PODS]
        return render_template_string(
            _NAMESPACE,
            style=_STYLE,
            back="../",
            name=namespace,
            state=status.state,
            colour=STATE_COLOURS.get(status.state, "#555"),
            used=_hours(status.used_gpu_hours),
            budget=_hours(status.budget_gpu_hours),
            bar=bar(status, width=360),
            burn=_hours(status.burn_rate_gpu_hours_per_day),
            projected=_hours(status.projected_gpu_hours),
            period=status.period,
            period_start=rfc3339(status.period_start),
            period_end=rfc3339(status.period_end),
            resets=_resets(status),
            refills=_refills(status),
            when_exhausted=status.when_exhausted,
            idle=_percent(idle),
            chart=Markup(daily_chart(days, budget=status.budget_gpu_hours)),
            zone=budget.timezone,
            pods=[
                {
                    "name": row.key,
                    "allocated": f"{row.gpu_seconds / 3600:,.3f}",
                    "used": (
                        f"{row.used_gpu_seconds / 3600:,.3f}"
                        if row.measured_gpu_seconds > 0
                        else "-"
                    ),
                    "idle": _percent(row.idle_share),
                    "reports": row.reports,
                    "last": rfc3339(row.last_end),
                }
                for row in top
            ],
            now=rfc3339(now),
        )
