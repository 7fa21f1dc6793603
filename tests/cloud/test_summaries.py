"""Batches of summaries (edge `overflow = "downsample"`) reaching a real aggregator: merged
into the windows (cloud/summaries.py), counted, and a late one dead-lettered as a batch of
summaries, never skipped."""

from __future__ import annotations

import random

from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from cloud.records import WindowId, WindowRecord
from edge import compaction
from gateway import codec
from tests.cloud.test_aggregator import agg_windows, cloud_config, dlq_messages, running
from tests.edge.test_downsample import T0, _batch, _readings, truth
from tests.helpers import eventually

MIN = 60 * 1_000_000_000


async def test_summaries_merge_into_windows_and_a_late_one_is_dead_lettered(
    nc: NatsClient, js: JetStreamContext
) -> None:
    rng = random.Random(12)
    old = _readings(rng, 120, series=2, start_s=0)  # minute 0 of d0 and d1
    new = _readings(rng, 120, series=2, start_s=60)  # minute 1
    summary = compaction.summarise([_batch(old)], 60, "a1:i:1.60s")
    async with running(nc, cloud_config()) as agg:
        await js.publish("telemetry.s1.a1", codec.encode(summary))
        await js.publish("telemetry.s1.a1", codec.encode(_batch(new, seq0=1000)))
        got = await eventually(lambda: agg_windows(js), _both_minutes_closed, timeout=30)
        assert (agg.stats.summaries, agg.stats.summarised_readings) == (2, 120)
        assert agg.stats.readings == 120 and agg.stats.bad_messages == 0
        # Minute 0 again, from other readings: its windows are final by now.
        again = _readings(rng, 120, series=2, start_s=0)
        late = compaction.summarise([_batch(again)], 60, "a1:i:9.60s")
        await js.publish("telemetry.s1.a1", codec.encode(late))
        letters = await eventually(lambda: dlq_messages(js), lambda m: len(m) == 2)
        assert agg.stats.late_readings == 2 * 120
    for device in ("d0", "d1"):
        want = truth(old, 60)[((device, "temp", "Cel"), T0)]
        r = got[("1m", "s1", device, "temp", T0)]
        count, lo, hi, total, _, first, _, last = want
        assert (r.count, r.min, r.max, r.sum, r.first, r.last) == (
            count,
            lo,
            hi,
            total,
            first,
            last,
        )
        assert r.summarised == 60 and r.mean == total / count
        raw = got[("1m", "s1", device, "temp", T0 + MIN)]
        assert raw.summarised == 0 and raw.count == 60
        # 10 s windows: the minute summary whole in the window of its first reading
        ten = [k for k in got if k[0] == "10s" and k[2] == device and k[4] < T0 + MIN]
        assert ten == [("10s", "s1", device, "temp", T0)]
        assert got[ten[0]].count == got[ten[0]].summarised == 60
    reasons = sorted(m.headers["Gateway-Dead-Letter-Reason"] for m in letters)
    assert reasons == ["late_10s", "late_1m"]
    for m in letters:
        assert m.headers["Content-Type"] == codec.SUMMARY_CONTENT_TYPE
        assert codec.decode(m.data).summaries == late.summaries


def _both_minutes_closed(got: dict[WindowId, WindowRecord]) -> bool:
    keys = [("1m", "s1", d, "temp", T0 + m * MIN) for d in ("d0", "d1") for m in (0, 1)]
    return all(k in got and got[k].count == 60 and got[k].closed for k in keys)
