"""Prometheus metrics of the timekeeper.

Request counts and latencies are ordinary counters and histograms. Under gunicorn with
several workers they must be summed over the workers: `PROMETHEUS_MULTIPROC_DIR` names an
empty folder shared by the workers (prometheus-client then keeps each worker's values in
files there) and `/metrics` collects them with `MultiProcessCollector`. The budget gauges
(budget, used, remaining per namespace) are read from the database at scrape time by
`BudgetCollector`, so they are right whichever worker answers; `BudgetsFileCollector` says
whether the budgets file on disk was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from timekeeper.policy_source import PolicySource
from timekeeper.states import BudgetStatus

logger = logging.getLogger(__name__)

PREFIX = "gpushare_timekeeper"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class BudgetCollector(Collector):
    """Budget, used and remaining GPU-hours per namespace, computed when scraped."""

    def __init__(self, statuses: Callable[[], list[BudgetStatus]]) -> None:
        self._statuses = statuses

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace"]
        budget = GaugeMetricFamily(
            f"{PREFIX}_budget_gpu_hours",
            "GPU-hours per period (namespaces with an unlimited budget are left out)",
            labels=labels,
        )
        used = GaugeMetricFamily(
            f"{PREFIX}_used_gpu_hours", "GPU-hours used in the current period", labels=labels
        )
        remaining = GaugeMetricFamily(
            f"{PREFIX}_remaining_gpu_hours",
            "GPU-hours left in the current period (limited budgets only)",
            labels=labels,
        )
        state = GaugeMetricFamily(
            f"{PREFIX}_budget_state",
            "1 for the namespace's current state",
            labels=["namespace", "state"],
        )
        try:
            statuses = self._statuses()
        except Exception:  # a scrape must not fail because the database is away
            logger.exception("cannot read budgets for /metrics")
            statuses = []
        for status in statuses:
            used.add_metric([status.namespace], status.used_gpu_hours)
            state.add_metric([status.namespace, status.state], 1.0)
            if status.budget_gpu_hours is not None and status.remaining_gpu_hours is not None:
                budget.add_metric([status.namespace], status.budget_gpu_hours)
                remaining.add_metric([status.namespace], status.remaining_gpu_hours)
        yield from (budget, used, remaining, state)


class BudgetsFileCollector(Collector):
    """Whether the budgets file on disk is in force, read from this worker's policy source
    when scraped (every worker checks the same file, so they agree within one check)."""

    def __init__(self, source: PolicySource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        self._source.current()  # a scrape checks the file like any other request
        rejected = GaugeMetricFamily(
            f"{PREFIX}_budgets_file_rejected",
            "1 while the budgets file is invalid and the last good policy stays in force",
        )
        rejected.add_metric([], 1.0 if self._source.last_error is not None else 0.0)
        yield rejected
        loaded = self._source.loaded_at
        if loaded is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_budgets_loaded_timestamp_seconds",
                "When the budgets policy in force was loaded (Unix time)",
                value=loaded.timestamp(),
            )


class Metrics:
    """The metrics of one app, on its own registry."""

    def __init__(
        self,
        statuses: Callable[[], list[BudgetStatus]],
        *,
        multiprocess_dir: Path | None = None,
        budgets_file: PolicySource | None = None,
        collectors: Sequence[Collector] = (),
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route, method and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer HTTP requests, by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reports = Counter(
            f"{PREFIX}_reports",
            "Usage reports received, by outcome (stored, resent, rejected, refused)",
            ["outcome"],
            registry=self.registry,
        )
        self._budgets: list[Collector] = [BudgetCollector(statuses)]
        if budgets_file is not None:
            self._budgets.append(BudgetsFileCollector(budgets_file))
        self._budgets.extend(collectors)
        self._multiprocess_dir = multiprocess_dir
        if multiprocess_dir is None:
            for collector in self._budgets:
                self.registry.register(collector)

    def render(self) -> bytes:
        """The text exposition of every metric (all workers', in multi-process mode)."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._multiprocess_dir))
        for collector in self._budgets:
            registry.register(collector)
        return generate_latest(registry)
