"""Uplink pieces that need no server: our own PubAck deadline (nats.py#985), backoff."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.buffer import PendingBatch, SourceCounts, SqliteBuffer
from edge.errors import PublishFailed
from edge.uplink import Uplink, _Window
from gateway import config
from gateway.config import AgentConfig
from gateway.retry import Backoff


def _uplink(tmp_path: Path) -> Uplink:
    cfg = config.parse(
        AgentConfig, {"site": "s", "agent": "a", "uplink": {"publish_timeout_s": 0.2}}
    )
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 20)
    buf.open()
    for _ in range(3):
        buf.commit(
            PendingBatch("ct", 10, b"x" * 100),
            buf.next_batch_id("a"),
            [],
            None,
            SourceCounts(Counter({"mqtt0": 10})),
        )
    return Uplink(cfg.site, cfg.agent, cfg.uplink, buf, asyncio.Event())


async def test_a_puback_that_never_comes_is_cut_off_by_our_deadline(tmp_path: Path) -> None:
    up = _uplink(tmp_path)
    batches = up.buffer.oldest_batches(10)
    loop = asyncio.get_running_loop()
    acked: asyncio.Future[object] = loop.create_future()
    acked.set_result(SimpleNamespace(duplicate=False))
    hung: list[asyncio.Future[object]] = [loop.create_future(), loop.create_future()]
    window = _Window(batches, [acked, *hung], time.monotonic())
    up.stats.in_flight = 3
    started = time.monotonic()
    with pytest.raises(PublishFailed, match="2 of 3"):
        await up._settle(window)
    assert time.monotonic() - started < 2.0
    assert all(f.cancelled() for f in hung)  # nothing is left waiting forever
    assert [b.row for b in up.buffer.oldest_batches(10)] == [2, 3]  # only the acked one went
    assert (up.stats.publish_timeouts, up.stats.in_flight, up.stats.readings_published) == (
        2,
        0,
        10,
    )


def test_metrics_estimate_the_time_to_drain(tmp_path: Path) -> None:
    up = _uplink(tmp_path)
    assert up.metrics(1000)["drain_eta_s"] is None  # no rate measured yet
    up.stats.drain_rate = 500.0
    m = up.metrics(1000)
    assert m["drain_eta_s"] == 2.0 and {"in_flight", "latency_ms"} <= m.keys()


def test_backoff_grows_is_capped_and_jittered() -> None:
    b = Backoff(0.1, 1.0)
    delays = [b.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1 and all(0.5 <= d <= 1.0 for d in delays[4:])
    assert len(set(delays)) == len(delays)
    b.reset()
    assert b.next() <= 0.1
