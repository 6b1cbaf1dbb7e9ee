"""Prometheus metrics of one webhook process (its own registry, so apps never collide)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class Metrics:
    """Counters and histograms the app and the budget client update."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "gpushare_webhook_requests_total",
            "Admission and probe requests by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gpushare_webhook_request_seconds",
            "Time to answer an admission request.",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.timekeeper_errors = Counter(
            "gpushare_webhook_timekeeper_errors_total",
            "Failed budget lookups at the timekeeper, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.budget_cache = Counter(
            "gpushare_webhook_budget_cache_total",
            "Budget lookups by cache result (fresh, stale, miss, skipped).",
            ["result"],
            registry=self.registry,
        )
        self.failure_policy = Counter(
            "gpushare_webhook_failure_policy_total",
            "Admissions decided by the failure policy because no budget state was known.",
            ["policy"],
            registry=self.registry,
        )
