"""A backlog drained by the uplink into a real JetStream: all of it, once, oldest first,
with its drain rate and latency measured (issue 4)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from edge.buffer import PendingBatch, SourceCounts, SqliteBuffer
from edge.uplink import Uplink
from gateway import config, subjects
from gateway.config import AgentConfig
from tests.edge.drain import drain_until_empty

BATCHES = 40


async def test_backlog_goes_out_once_oldest_first_in_pipelined_windows(
    tmp_path: Path, nc: NatsClient, js: JetStreamContext
) -> None:
    cfg = config.parse(
        AgentConfig,
        {"site": "s", "agent": "a", "uplink": {"max_window_bytes": 1 << 16}},  # 2 per window
    )
    buf = SqliteBuffer(tmp_path / "b.sqlite3", max_bytes=1 << 30)
    buf.open()
    ids = []
    for i in range(BATCHES):
        ids.append(buf.next_batch_id("a"))
        buf.commit(
            PendingBatch("application/octet-stream", 10, b"batch %d " % i * 2500),
            ids[-1],
            [],
            None,
            SourceCounts(Counter({"mqtt0": 10})),
        )
    uplink = Uplink(cfg.site, cfg.agent, cfg.uplink, buf, asyncio.Event())

    await drain_until_empty(uplink, buf, nc, timeout=30)
    info = await js.stream_info(subjects.TELEMETRY_STREAM)
    assert info.state.messages == BATCHES
    stored = [
        (await js.get_msg(subjects.TELEMETRY_STREAM, seq)).headers or {}
        for seq in range(1, BATCHES + 1)
    ]
    assert [h.get("Nats-Msg-Id") for h in stored] == ids  # once each, oldest first
    assert (uplink.stats.batches_published, uplink.stats.readings_published) == (40, 400)
    assert uplink.stats.duplicate_acks == 0 and uplink.stats.in_flight == 0
    assert uplink.stats.drain_rate > 0 and uplink.stats.latency_ms > 0
    assert uplink.metrics(0)["drain_eta_s"] == 0.0
    assert buf.counters()["published:mqtt0"] == 400
    buf.close()
