"""A batch of summaries (edge `overflow = "downsample"`) reaching the aggregator: this
version does not aggregate summaries yet, so it dead-letters the message whole (reason
`summary`), counted, instead of skipping it as an empty batch."""

from __future__ import annotations

import random

from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.aggregator import Aggregator
from edge import compaction
from gateway import codec
from tests.cloud.test_aggregator import cloud_config, dlq_messages, running
from tests.edge.test_downsample import _batch, _readings
from tests.helpers import eventually


async def test_a_summary_batch_is_dead_lettered_not_lost(
    nc: NatsClient, js: JetStreamContext
) -> None:
    rows = _readings(random.Random(12), 120, series=2, start_s=0)
    summary = compaction.summarise([_batch(rows)], 60, "a1:i:1.60s")
    raw = _batch(rows[:10])
    async with running(nc, cloud_config()) as agg:
        await js.publish("telemetry.s1.a1", codec.encode(summary))
        await js.publish("telemetry.s1.a1", codec.encode(raw))
        (letter,) = await eventually(lambda: dlq_messages(js), lambda m: len(m) == 1)
        await eventually(lambda: _readings_in(agg), lambda n: n == 10)
        assert agg.stats.bad_messages == 1
    assert letter.headers["Gateway-Dead-Letter-Reason"] == "summary"
    assert codec.decode(letter.data).summaries == summary.summaries


async def _readings_in(agg: Aggregator) -> int:
    return agg.stats.readings
