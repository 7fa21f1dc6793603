"""A buffer filled under `overflow = "downsample"` while the cloud is away, then drained by
the uplink into a real JetStream (nats-server with TLS and JWT creds, tests/conftest.py):
every reading reaches the stream either itself or inside a summary, exactly once, and the
accounting reconciles."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from edge import accounting, compaction
from edge.buffer import SqliteBuffer
from edge.uplink import Uplink
from gateway import codec, config, subjects
from gateway.config import AgentConfig
from tests.edge.drain import drain_until_empty
from tests.edge.test_downsample import _coarsest, _fill, _readings, as_truth, truth


async def test_a_downsampled_backlog_drains_whole_and_reconciles(
    tmp_path: Path, nc: NatsClient, js: JetStreamContext
) -> None:
    cfg = config.parse(AgentConfig, {"site": "s1", "agent": "a1"})
    buf = SqliteBuffer(
        tmp_path / "b.sqlite3", max_bytes=1 << 16, overflow="downsample", max_age_s=0
    )
    buf.open()
    rows = _readings(random.Random(11), 40_000, series=20, start_s=0)
    _fill(buf, rows, per_batch=200)  # the cloud is away: nothing is sent meanwhile
    before = accounting.accounts(buf.connection)["mqtt0"]
    assert before.summarised > 0 and before.dropped.total() == 0
    uplink = Uplink(cfg.site, cfg.agent, cfg.uplink, buf, asyncio.Event())

    await drain_until_empty(uplink, buf, nc, timeout=60)
    info = await js.stream_info(subjects.TELEMETRY_STREAM)
    sent = [
        codec.decode((await js.get_msg(subjects.TELEMETRY_STREAM, seq)).data or b"")
        for seq in range(1, info.state.messages + 1)
    ]
    assert sum(len(b) for b in sent) + sum(s.count for b in sent for s in b.summaries) == len(rows)
    kinds = [bool(b.summaries) for b in sent]
    assert True not in kinds[kinds.index(False) :]  # the summaries went first, oldest first
    width = _coarsest(sent)
    assert as_truth(compaction.summarise(sent, width, "check")) == truth(rows, width)
    after = accounting.accounts(buf.connection)["mqtt0"]
    assert after.balance == 0 and after.buffered == after.summarised_buffered == 0
    assert after.published + after.summarised == after.received == len(rows)
    assert after.summarised_published == after.summarised == before.summarised
    buf.close()
