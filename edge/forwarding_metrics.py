"""Store-and-forward figures on /metrics, read when Prometheus scrapes.

The buffer's depth and the per-source accounting live in the buffer's SQLite file
(edge/accounting.py), the uplink's figures in `UplinkStats`. A collector reads both at
scrape time, so /metrics shows the same numbers as `gateway edge stats` and the heartbeat
instead of a second set of counters that could drift from them.

Per-source counters come from the buffer file and so survive restarts; the uplink's
(`gateway_agent_uplink_*_total`) count from the agent's start.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge import accounting
from edge.buffer import SqliteBuffer
from edge.uplink import Uplink

_UPLINK_COUNTERS = {
    "batches_published": "Batches acknowledged by JetStream",
    "readings_published": "Readings in batches acknowledged by JetStream",
    "dead_letters_published": "Dead letters acknowledged by JetStream",
    "duplicate_acks": "PubAcks that said the batch was already stored (a resend)",
    "publish_errors": "Publish rounds that failed and were retried",
    "publish_timeouts": "Publishes without a PubAck before the deadline",
    "reconciled_batches": "Batches found in the stream after the dedupe window, not resent",
}


class ForwardingCollector(Collector):
    """Buffer depth, uplink state and the per-source account of one agent."""

    def __init__(self, buffer: SqliteBuffer, uplink: Uplink) -> None:
        self.buffer = buffer
        self.uplink = uplink

    def collect(self) -> Iterator[Metric]:
        db = self.buffer.connection
        depth = accounting.depth(db)
        yield _gauge("buffer_batches", "Batches in the buffer", depth.batches)
        yield _gauge("buffer_readings", "Readings in the buffer", depth.readings)
        yield _gauge("buffer_bytes", "Bytes of stored (compressed) batches", depth.bytes)
        yield _gauge("buffer_dead_letters", "Dead letters waiting to be sent", depth.dead_letters)
        yield _gauge(
            "buffer_oldest_age_seconds",
            "Age of the oldest buffered batch (0 when the buffer is empty)",
            depth.oldest_age_s or 0.0,
        )
        up = self.uplink.metrics(depth.readings)
        yield _gauge("uplink_in_flight", "Publishes awaiting their PubAck", up["in_flight"])
        yield _gauge(
            "uplink_latency_seconds",
            "Moving average from a window's first publish to its last PubAck",
            up["latency_ms"] / 1000,
        )
        yield _gauge(
            "uplink_drain_readings_per_second",
            "Moving average of the backlog drain rate",
            up["drain_rate"],
        )
        eta = GaugeMetricFamily(
            "gateway_agent_uplink_drain_eta_seconds",
            "Estimated time to drain the buffer at the drain rate (absent until measured)",
        )
        if up["drain_eta_s"] is not None:
            eta.add_metric([], up["drain_eta_s"])
        yield eta
        for name, doc in _UPLINK_COUNTERS.items():
            yield CounterMetricFamily(f"gateway_agent_uplink_{name}", doc, value=up[name])
        yield from _account_families(accounting.accounts(db))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"gateway_agent_{name}", doc, value=value)


def _account_families(accounts: dict[str, accounting.SourceAccount]) -> Iterator[Metric]:
    """received = published + buffered + summarised + dropped (by reason) + dead-lettered,
    per source."""
    by_source = ["source"]
    received = CounterMetricFamily(
        "gateway_agent_source_received_readings", "Readings received, by source", labels=by_source
    )
    published = CounterMetricFamily(
        "gateway_agent_source_published_readings",
        "Readings acknowledged by JetStream, by source",
        labels=by_source,
    )
    dead = CounterMetricFamily(
        "gateway_agent_source_dead_lettered",
        "Messages and readings sent to the dead-letter stream, by source",
        labels=by_source,
    )
    dropped = CounterMetricFamily(
        "gateway_agent_source_dropped_readings",
        "Readings dropped, by source and reason (overflow, expired, disk_full)",
        labels=["source", "reason"],
    )
    buffered = GaugeMetricFamily(
        "gateway_agent_source_buffered_readings",
        "Readings in the buffer, by source",
        labels=by_source,
    )
    summarised = CounterMetricFamily(
        "gateway_agent_source_summarised_readings",
        "Readings compacted into summaries under overflow = downsample (and not dropped"
        " since), by source",
        labels=by_source,
    )
    balance = GaugeMetricFamily(
        "gateway_agent_source_unaccounted_readings",
        "received - (published + buffered + summarised + dropped + dead-lettered):"
        " 0 when it reconciles",
        labels=by_source,
    )
    for source, a in sorted(accounts.items()):
        received.add_metric([source], a.received)
        published.add_metric([source], a.published)
        dead.add_metric([source], a.dead_lettered)
        buffered.add_metric([source], a.buffered)
        summarised.add_metric([source], a.summarised)
        balance.add_metric([source], a.balance)
        for reason, n in sorted(a.dropped.items()):
            dropped.add_metric([source, reason], n)
    yield from (received, published, dead, dropped, buffered, summarised, balance)
