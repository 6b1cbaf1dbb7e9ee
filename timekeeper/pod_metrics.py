"""Per-pod Prometheus gauges: the GPU share each pod was promised and the share it got.

Computed from the ledger when scraped, over the reports of the last `window_seconds`, so
every worker answers the same and a pod that stopped reporting drops out. Both gauges are in
GPUs: `promised` is the pod's vcuda-core / 100 (its latest report), `delivered` the GPUs it
really used on average while measured (`smUtilization` x the GPUs it spans). Pods whose
reports carry no measurement have only the promised gauge. `report_delay_seconds` is how
late the pod's latest report arrived after its interval ended: a sidecar that spools
(timekeeper unreachable from its pod, reports refused) delivers late.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpushare.resources import CORE_UNITS_PER_GPU
from timekeeper.ledger import Ledger

logger = logging.getLogger(__name__)

PREFIX = "gpushare_timekeeper"
DEFAULT_WINDOW_SECONDS = 900.0


class PodShareCollector(Collector):
    """`gpushare_timekeeper_pod_promised_gpu_share` and `…_pod_delivered_gpu_share`."""

    def __init__(
        self,
        ledger: Ledger,
        clock: Callable[[], datetime],
        *,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._window = timedelta(seconds=window_seconds)

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "pod"]
        promised = GaugeMetricFamily(
            f"{PREFIX}_pod_promised_gpu_share",
            "GPUs a pod holds by allocation (vcuda-core / 100), pods that reported in the "
            "last 15 minutes",
            labels=labels,
        )
        delivered = GaugeMetricFamily(
            f"{PREFIX}_pod_delivered_gpu_share",
            "GPUs a pod really used on average over its measured reports of the last 15 minutes",
            labels=labels,
        )
        delay = GaugeMetricFamily(
            f"{PREFIX}_pod_report_delay_seconds",
            "How long after its end a pod's latest report arrived: grows while its sidecar "
            "delivers a backlog from its spool",
            labels=labels,
        )
        now = self._clock()
        try:
            rows = self._ledger.pods(now - self._window, now)
        except Exception:  # a scrape must not fail because the database is away
            logger.exception("cannot read pod shares for /metrics")
            rows = []
        for row in rows:
            share = row.vcuda_core / CORE_UNITS_PER_GPU
            promised.add_metric([row.namespace, row.key], share)
            delay.add_metric([row.namespace, row.key], round(row.delivery_delay_seconds, 3))
            ratio = row.delivered_share
            if ratio is not None:
                delivered.add_metric([row.namespace, row.key], round(share * ratio, 6))
        yield promised
        yield delivered
        yield delay
