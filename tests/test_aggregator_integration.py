"""The aggregator on a real JetStream: published windows equal a direct computation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import orjson
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.aggregator import Aggregator
from gateway import codec, config, subjects
from gateway.config import CloudConfig
from tests.helpers import eventually

WIDTH_NS = 10 * 10**9


@pytest.fixture
async def aggregator(nc: NatsClient, js: JetStreamContext) -> AsyncIterator[Aggregator]:
    cfg = config.parse(CloudConfig, {"aggregator": {"idle_close_s": 0.5, "lateness_s": 1}})
    agg = Aggregator(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(nc, stop))
    yield agg
    stop.set()
    await asyncio.wait_for(task, 10)


async def _agg_records(js: JetStreamContext) -> list[dict[str, object]]:
    info = await js.stream_info(subjects.AGG_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages:
            out.append(orjson.loads((await js.get_msg(subjects.AGG_STREAM, seq)).data or b""))
    return out


async def test_windows_equal_direct_computation(
    js: JetStreamContext, aggregator: Aggregator
) -> None:
    rng = np.random.default_rng(3)
    t0 = 1_700_000_000 * 10**9
    rows = []  # (agent, device, metric, value, time, seq)
    for agent in ("a1", "a2"):
        seq = 0
        for i in range(600):
            seq += 1
            rows.append(
                (
                    agent,
                    f"{agent}-d{i % 3}",
                    ["temp", "hum"][i % 2],
                    float(rng.normal(20, 3)),
                    t0 + i * 100_000_000,
                    seq,
                )
            )
    for agent in ("a1", "a2"):
        mine = [r for r in rows if r[0] == agent]
        for start in range(0, len(mine), 97):
            b = codec.ColumnBuilder("s1", agent, f"{agent}:{start}")
            for _, dev, metric, value, t, seq in mine[start : start + 97]:
                b.add(dev, metric, "u", value, t, seq)
            await js.publish(
                subjects.telemetry("s1", agent),
                codec.encode(b.build()),
                headers={"Nats-Msg-Id": f"{agent}:{start}"},
            )
    expected: dict[tuple[str, str, int], list[tuple[int, int, float]]] = {}
    for _, dev, metric, value, t, seq in rows:
        expected.setdefault((dev, metric, t - t % WIDTH_NS), []).append((t, seq, value))

    records = await eventually(
        lambda: _agg_records(js), lambda r: len(r) >= len(expected), timeout=30
    )
    assert len(records) == len(expected)
    for rec in records:
        items = expected[(rec["device"], rec["metric"], rec["start_ns"])]  # type: ignore[index]
        values = [v for _, _, v in items]
        assert rec["count"] == len(values)
        assert rec["min"] == min(values) and rec["max"] == max(values)
        assert rec["last"] == max(items)[2]
        assert rec["mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert rec["closed"] is True
    assert aggregator.stats.readings == len(rows)
    # Every TELEMETRY message was acknowledged once its windows were published.
    info = await js.consumer_info(subjects.TELEMETRY_STREAM, "aggregator")
    await eventually(
        lambda: js.consumer_info(subjects.TELEMETRY_STREAM, "aggregator"),
        lambda i: i.num_ack_pending == 0,
        timeout=10,
    )
    assert info.num_pending == 0
