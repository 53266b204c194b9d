"""Prometheus metrics in a registry of the companion's own (never the process-wide default one).

Counters and the histogram are bumped where things happen; the gauges are read from the latest
published report at scrape time, so they always agree with /status.json.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from companion.observe.status import Report

APPLY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _unix(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


class _ReportCollector(Collector):
    def __init__(self, latest: Callable[[], Report]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self.latest()
        not_after = GaugeMetricFamily(
            "companion_certificate_not_after_timestamp_seconds",
            "Expiry of each usable certificate, unix time",
            labels=["name"],
        )
        for cert in report.certificates:
            if cert.not_after:
                not_after.add_metric([cert.name], _unix(cert.not_after))
        yield not_after
        yield GaugeMetricFamily("companion_sites", "Hosts nginx serves", value=len(report.sites))
        yield GaugeMetricFamily(
            "companion_containers_left_out", "Containers routed nowhere, with a reason", value=len(report.left_out)
        )
        yield GaugeMetricFamily("companion_problems", "Problems reported now", value=len(report.problems))
        yield GaugeMetricFamily(
            "companion_last_success_timestamp_seconds",
            "When a pass last applied without error, unix time (0: none yet)",
            value=_unix(report.last_success) if report.last_success else 0.0,
        )


class Metrics:
    def __init__(self, latest: Callable[[], Report]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reloads = Counter("companion_nginx_reloads", "nginx reloads by result", ["result"], registry=self.registry)
        self.apply_seconds = Histogram(
            "companion_apply_duration_seconds",
            "Render, write, nginx -t and reload for passes that changed files",
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )
        self.orders = Counter("companion_acme_orders", "ACME orders by result", ["result"], registry=self.registry)
        self.docker_events = Counter(
            "companion_docker_events", "Docker events that woke the loop", registry=self.registry
        )
        for result in ("ok", "failed"):  # present at zero before the first
            self.reloads.labels(result)
            self.orders.labels(result)
        self.registry.register(_ReportCollector(latest))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
