"""Prometheus metrics of an aggregator worker, served on 127.0.0.1 by aiohttp.

Counters for readings in, windows out, late and bad readings (Prometheus derives rates
with `rate()`); gauges for consumer lag (pending messages, age of the oldest unprocessed
message) and the rates over the last sampling interval, for a quick look without Prometheus.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class AggregatorMetrics:
    def __init__(self, partition: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"partition": partition}

        def counter(name: str, text: str) -> Counter:
            c = Counter(name, text, list(labels), registry=self.registry)
            return c.labels(**labels)

        def gauge(name: str, text: str) -> Gauge:
            g = Gauge(name, text, list(labels), registry=self.registry)
            return g.labels(**labels)

        self.messages = counter("gateway_agg_messages", "TELEMETRY messages processed")
        self.readings = counter("gateway_agg_readings", "readings aggregated")
        self.windows = counter("gateway_agg_windows", "window results published to AGG")
        self.late = counter("gateway_agg_late_readings", "readings beyond lateness, to DLQ")
        self.duplicates = counter(
            "gateway_agg_duplicate_readings", "readings that reached TELEMETRY again, counted once"
        )
        self.summaries = counter(
            "gateway_agg_summaries", "edge summaries (overflow = downsample) merged into windows"
        )
        self.summarised = counter(
            "gateway_agg_summarised_readings", "readings the merged summaries stand for"
        )
        self.bad = counter("gateway_agg_bad_readings", "undecodable or non-finite, to DLQ")
        self.replayed = counter("gateway_agg_replayed_messages", "messages replayed at start")
        self.pending = gauge("gateway_agg_consumer_pending", "TELEMETRY messages not yet read")
        self.lag_age = gauge(
            "gateway_agg_oldest_unprocessed_age_seconds",
            "age of the oldest TELEMETRY message not yet processed (0 when caught up)",
        )
        self.readings_rate = gauge("gateway_agg_readings_per_second", "over the last interval")
        self.windows_rate = gauge("gateway_agg_windows_per_second", "over the last interval")
        self._last = (time.monotonic(), 0.0, 0.0)

    def sample_rates(self, r: float, w: float) -> None:
        """Set the rate gauges from the running totals of readings `r` and windows `w`."""
        now = time.monotonic()
        t, readings, windows = self._last
        if now > t:
            self.readings_rate.set((r - readings) / (now - t))
            self.windows_rate.set((w - windows) / (now - t))
        self._last = (now, r, w)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_app(metrics: AggregatorMetrics) -> web.Application:
    """An application serving `/metrics` (run it with `cloud.httpd.serve_app`)."""

    async def handler(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
