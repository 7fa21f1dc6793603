"""/metrics shows the store-and-forward figures `gateway edge stats` shows (issue 4)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from edge import accounting
from edge.buffer import DeadLetter, PendingBatch, SourceCounts, SqliteBuffer
from edge.forwarding_metrics import ForwardingCollector
from edge.uplink import Uplink
from gateway.config import UplinkSettings
from tests.helpers import metric_samples


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    return metric_samples(generate_latest(registry).decode())


def test_metrics_match_the_accounting_of_the_buffer(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=60_000)  # room for 5 of 12 batches
    buf.open()
    for i in range(12):
        source = "mqtt0" if i % 3 else "serial0"
        buf.commit(
            PendingBatch("ct", 10, random.randbytes(10_000)),  # incompressible
            buf.next_batch_id("a"),
            [DeadLetter(source, "invalid_json", "d", b"{")] if i == 4 else [],
            None,
            SourceCounts(Counter({source: 10})),
        )
    oldest = buf.oldest_batches(2)
    buf.delete_batches(oldest)  # as after their PubAck
    uplink = Uplink("s", "a", UplinkSettings(), buf, asyncio.Event())
    uplink.stats.batches_published, uplink.stats.in_flight = 2, 3
    uplink.stats.latency_ms, uplink.stats.drain_rate = 250.0, 10.0
    registry = CollectorRegistry()
    registry.register(ForwardingCollector(buf, uplink))

    m = _samples(registry)
    report = accounting.report(buf.connection)
    assert report["reconciles"]
    depth = report["buffer"]
    assert m["gateway_agent_buffer_batches"] == depth["batches"] == 3
    assert m["gateway_agent_buffer_readings"] == depth["readings"] == 30
    assert m["gateway_agent_buffer_bytes"] == depth["bytes"]
    assert m["gateway_agent_buffer_dead_letters"] == 1
    assert m["gateway_agent_buffer_oldest_age_seconds"] > 0
    for source, acct in report["sources"].items():
        label = f"{{source={source}}}"
        assert m[f"gateway_agent_source_received_readings_total{label}"] == acct["received"]
        assert m[f"gateway_agent_source_published_readings_total{label}"] == acct["published"]
        assert m[f"gateway_agent_source_buffered_readings{label}"] == acct["buffered"]
        assert m[f"gateway_agent_source_dead_lettered_total{label}"] == acct["dead_lettered"]
        assert m[f"gateway_agent_source_unaccounted_readings{label}"] == 0
        for reason, n in acct["dropped"].items():
            key = f"gateway_agent_source_dropped_readings_total{{reason={reason}}}{label}"
            assert m[key] == n
    dropped = {
        k: v for k, v in m.items() if k.startswith("gateway_agent_source_dropped_readings_total")
    }
    assert sum(v for k, v in dropped.items() if "reason=overflow" in k) == 70  # 7 batches
    assert m["gateway_agent_source_published_readings_total{source=mqtt0}"] == 20
    assert m["gateway_agent_uplink_batches_published_total"] == 2
    assert m["gateway_agent_uplink_in_flight"] == 3
    assert m["gateway_agent_uplink_latency_seconds"] == 0.25
    assert m["gateway_agent_uplink_drain_eta_seconds"] == 3.0  # 30 readings at 10/s
    buf.close()


def test_no_drain_estimate_before_a_drain_was_measured(tmp_path: Path) -> None:
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    buf.open()
    registry = CollectorRegistry()
    registry.register(
        ForwardingCollector(buf, Uplink("s", "a", UplinkSettings(), buf, asyncio.Event()))
    )
    m = _samples(registry)
    assert "gateway_agent_uplink_drain_eta_seconds" not in m
    assert m["gateway_agent_buffer_oldest_age_seconds"] == 0
    assert m["gateway_agent_buffer_batches"] == 0
    buf.close()
