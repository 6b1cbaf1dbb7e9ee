"""SVG charts of the usage pages (pure logic: numbers in, SVG text out).

Every number is formatted here and every label escaped, so the templates insert the SVG as
it is. Charts carry a `<title>` and `aria-label`s, so a screen reader (and a test reading the
rendered page) finds the figures, not only shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

STATE_COLOURS: Final = {
    "in-budget": "#2e7d32",
    "warning": "#ef6c00",
    "exhausted": "#c62828",
    "unlimited": "#1565c0",
}


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def budget_bar(
    *,
    used: float,
    budget: float | None,
    projected: float,
    warn_at_percent: float | None,
    state: str,
    width: int = 240,
    height: int = 16,
) -> str:
    """A horizontal bar: use against the budget, a tick at the warning level and at the
    projection. Unlimited budgets get an empty track with the word."""
    colour = STATE_COLOURS.get(state, "#555")
    if budget is None:
        label = f"{used:.2f} GPU-hours used, unlimited budget"
        return (
            f'<svg class="bar" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(label)}"><title>{escape(label)}</title>'
            f'<rect width="{width}" height="{height}" fill="#e3eaf5" rx="3"/>'
            f'<text x="6" y="{height - 4}" font-size="11" fill="{colour}">unlimited</text></svg>'
        )
    scale = max(budget, used, projected, 1e-9)
    share = 0.0 if budget == 0 else used / budget
    label = (
        f"{used:.2f} of {budget:.2f} GPU-hours used ({share * 100:.0f}%), projected {projected:.2f}"
    )
    parts = [
        f'<svg class="bar" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>',
        f'<rect width="{width}" height="{height}" fill="#eee" rx="3"/>',
        f'<rect class="used" width="{_n(min(used, scale) / scale * width)}" height="{height}" '
        f'fill="{colour}" rx="3"/>',
        f'<line x1="{_n(budget / scale * width)}" x2="{_n(budget / scale * width)}" y1="0" '
        f'y2="{height}" stroke="#000" stroke-width="2"/>',
    ]
    if warn_at_percent is not None and warn_at_percent < 100 and budget > 0:
        x = _n(budget * warn_at_percent / 100 / scale * width)
        parts.append(
            f'<line x1="{x}" x2="{x}" y1="0" y2="{height}" stroke="#ef6c00" '
            'stroke-dasharray="2,2"/>'
        )
    x = _n(min(projected, scale) / scale * width)
    parts.append(
        f'<line class="projection" x1="{x}" x2="{x}" y1="2" y2="{height - 2}" stroke="#555" '
        'stroke-width="2" stroke-dasharray="1,2"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Day:
    """One day of a period: its label and the GPU-hours charged in it."""

    label: str
    gpu_hours: float


def daily_chart(
    days: Sequence[Day],
    *,
    budget: float | None,
    width: int = 720,
    height: int = 220,
) -> str:
    """Daily use as bars (left axis) and the cumulative use as a line against the budget
    (right axis, a dashed line at the budget)."""
    left, right, top, bottom = 44, 52, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    count = max(len(days), 1)
    daily_max = max([day.gpu_hours for day in days] + [1e-9])
    cumulative: list[float] = []
    total = 0.0
    for day in days:
        total += day.gpu_hours
        cumulative.append(total)
    cum_max = max([total, budget or 0.0, 1e-9])
    step = plot_w / count
    label = f"daily GPU-hours over {len(days)} days, {total:.2f} in all" + (
        f" against a budget of {budget:.2f}" if budget is not None else ""
    )
    parts = [
        f'<svg class="daily" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for index, day in enumerate(days):
        bar_h = day.gpu_hours / daily_max * plot_h
        x = left + index * step
        parts.append(
            f'<rect class="day" x="{_n(x + step * 0.1)}" y="{_n(top + plot_h - bar_h)}" '
            f'width="{_n(step * 0.8)}" height="{_n(bar_h)}" fill="#90a4ae">'
            f"<title>{escape(day.label)}: {day.gpu_hours:.3f} GPU-hours</title></rect>"
        )
    if days:
        points = " ".join(
            f"{_n(left + (index + 0.5) * step)},{_n(top + plot_h - value / cum_max * plot_h)}"
            for index, value in enumerate(cumulative)
        )
        parts.append(
            f'<polyline class="cumulative" points="{points}" fill="none" stroke="#1565c0" '
            'stroke-width="2"/>'
        )
    if budget is not None:
        y = _n(top + plot_h - budget / cum_max * plot_h)
        parts.append(
            f'<line class="budget" x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" '
            'stroke="#c62828" stroke-dasharray="6,3"/>'
            f'<text x="{left + plot_w + 4}" y="{y}" font-size="11" fill="#c62828">budget</text>'
        )
    parts.append(
        f'<text x="{left - 4}" y="{top + 10}" font-size="11" text-anchor="end">'
        f"{daily_max:.2f}</text>"
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>'
        f'<text x="{left + plot_w + 4}" y="{top + 10}" font-size="11" fill="#1565c0">'
        f"{cum_max:.2f}</text>"
    )
    if days:
        parts.append(
            f'<text x="{left}" y="{height - 8}" font-size="11">{escape(days[0].label)}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" font-size="11" text-anchor="end">'
            f"{escape(days[-1].label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
