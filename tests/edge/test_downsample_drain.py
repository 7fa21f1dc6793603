"""A buffer filled under `overflow = "downsample"` while the cloud is away, then drained by
the uplink into a real JetStream (nats-server with TLS and JWT creds, tests/conftest.py):
every reading reaches the stream either itself or inside a summary, exactly once, the
accounting reconciles, and a real aggregator's windows over the summarised span have the
exact count, min, max, mean, first and last of the readings sent (cloud/summaries.py)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.records import WindowId, WindowRecord
from cloud.streams import ensure_streams
from cloud.windows import window_label
from edge import accounting, compaction
from edge.agent import Agent
from edge.buffer import SqliteBuffer
from edge.uplink import Uplink
from gateway import codec, config, subjects
from gateway.config import AgentConfig, BufferSettings, StreamSettings
from gateway.connect import nats_connection
from gateway.servers import NatsServer
from tests.cloud.reference import stream_batches
from tests.cloud.test_aggregator import agg_windows, cloud_config, dlq_messages, running
from tests.cloud.test_summary_merge import _placed, _truth
from tests.edge.drain import drain_until_empty
from tests.edge.test_agent_integration import agent_config
from tests.edge.test_agent_integration import running as agent_running
from tests.edge.test_downsample import T0, _coarsest, _fill, _readings, as_truth, truth
from tests.helpers import cloud_security, eventually, publish_qos1

WIDTHS = [10, 60, 600, 3600]


async def test_a_downsampled_backlog_drains_whole_and_reconciles(
    tmp_path: Path, nc: NatsClient, js: JetStreamContext
) -> None:
    cfg = config.parse(AgentConfig, {"site": "s1", "agent": "a1"})
    buf = SqliteBuffer(
        tmp_path / "b.sqlite3", max_bytes=1 << 15, overflow="downsample", max_age_s=0
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
    await _assert_cloud_windows(nc, js, rows, sent, width, after.summarised)


async def _assert_cloud_windows(
    nc: NatsClient,
    js: JetStreamContext,
    rows: list[tuple[str, int, float]],
    sent: list[codec.Batch],
    coarsest_s: int,
    summarised: int,
) -> None:
    """The aggregator over what was sent: windows as wide as every summary (or wider) equal
    the readings themselves; finer ones hold each summary whole in the window of its first
    reading; every reading counted once at every width."""
    want: dict[WindowId, dict[str, Any]] = {}
    for w in WIDTHS:
        exact = w % coarsest_s == 0
        want.update(_truth(rows, w) if exact else _placed([("", b) for b in sent], w))
    assert any(w % coarsest_s == 0 for w in WIDTHS) and coarsest_s < WIDTHS[-1]

    def complete(got: dict[WindowId, WindowRecord]) -> bool:
        return got.keys() == want.keys() and all(
            r.closed and r.count == want[k]["count"] for k, r in got.items()
        )

    async with running(nc, cloud_config(windows_s=WIDTHS)) as agg:
        got = await eventually(lambda: agg_windows(js), complete, timeout=60, interval=0.3)
        assert agg.stats.late_readings == agg.stats.bad_readings == 0
        assert agg.stats.summarised_readings == summarised
        assert agg.stats.readings + summarised == len(rows)
    assert await dlq_messages(js) == []
    for key, stats in want.items():
        r = got[key]
        for field in ("count", "min", "max", "sum", "mean", "first", "last"):
            assert getattr(r, field) == stats[field], (key, field)
    for w in WIDTHS:
        mine = [r for k, r in got.items() if k[0] == window_label(w)]
        assert sum(r.count for r in mine) == len(rows)
        assert sum(r.summarised for r in mine) == summarised


async def test_an_agent_downsamples_while_the_cloud_is_away_then_drains_exactly(
    tmp_path: Path, edge_broker: NatsServer
) -> None:
    """The same, end to end: devices publish over MQTT (QoS 1) to a real agent whose cloud
    is down, its 64 KiB buffer compacts the backlog, the cloud comes back at the same
    address, the agent drains, and the aggregator's windows are exact."""
    cloud = NatsServer(tmp_path / "cloud", name="cloud", security=cloud_security(tmp_path))
    await cloud.start()
    await cloud.stop()  # known address, nothing listening: the agent can only buffer
    buffer = BufferSettings(max_bytes=1 << 16, overflow="downsample", max_age_s=0)
    cfg = agent_config(tmp_path, cloud, edge_broker.mqtt_port).model_copy(update={"buffer": buffer})
    rows = _readings(random.Random(13), 60_000, series=20, start_s=0)
    packs = [_pack(rows[i : i + 100]) for i in range(0, len(rows), 100)]
    try:
        async with agent_running(Agent(cfg)) as agent:
            await asyncio.to_thread(publish_qos1, edge_broker.mqtt_port, "sensors/s1/pack", packs)
            taken = await eventually(
                lambda: _account(agent), lambda a: a["received"] == len(rows), timeout=60
            )
            assert taken["summarised"] > 0 and taken["published"] == 0  # compacted, not sent
            await cloud.start()
            async with nats_connection(cloud.client(), "test") as nc:
                js = nc.jetstream()
                await ensure_streams(js, StreamSettings())
                done = await eventually(
                    lambda: _account(agent),
                    lambda a: a["buffered"] == 0 and a["published"] + a["summarised"] == len(rows),
                    timeout=90,
                )
                assert done["dropped"] == {} and done["dead_lettered"] == 0 and done["reconciles"]
                sent = await stream_batches(js)
                assert sum(len(b) for b in sent) + sum(
                    s.count for b in sent for s in b.summaries
                ) == len(rows)
                await _assert_cloud_windows(nc, js, rows, sent, _coarsest(sent), done["summarised"])
    finally:
        await cloud.stop()


def _pack(rows: list[tuple[str, int, float]]) -> bytes:
    """One MQTT message of JSON readings, numbered per device (one reading a second)."""
    return orjson.dumps(
        [
            {"site": "s1", "device": d, "metric": "temp", "unit": "Cel", "value": v, "time": t,
             "seq": (t - T0) // 1_000_000_000}
            for d, t, v in rows
        ]
    )  # fmt: skip


async def _account(agent: Agent) -> dict[str, Any]:
    (acct,) = agent.snapshot().accounting["sources"].values()
    return dict(acct)
