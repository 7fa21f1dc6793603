"""The aggregator on a real JetStream: every window in AGG equals the batch recomputation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import NoKeysError

from cloud.aggregator import Aggregator
from cloud.errors import Abandoned, QueryError
from cloud.records import WindowId, WindowRecord
from cloud.streams import STATE_BUCKET, ensure_streams
from cloud.views.query import Selector, query
from cloud.views.watch import render
from gateway import codec, config, subjects
from gateway.config import CloudConfig, StreamSettings
from gateway.connect import CLOSE_ERRORS, connect
from gateway.servers import NatsServer
from tests.cloud.reference import (
    assert_windows_equal,
    make_batches,
    recompute,
    rows_of,
    windows_of,
)
from tests.helpers import eventually

WIDTHS = [10, 60]


def cloud_config(**aggregator: Any) -> CloudConfig:
    settings = {
        "windows_s": WIDTHS,
        "lateness_s": 2,
        "idle_close_s": 0.3,
        "checkpoint_interval_s": 0.1,
        "live_update_s": 0.2,
    }
    settings.update(aggregator)
    return config.parse(CloudConfig, {"aggregator": settings})


@asynccontextmanager
async def running(
    nc: NatsClient, cfg: CloudConfig, partition: int = 0, partitions: int = 1
) -> AsyncIterator[Aggregator]:
    agg = Aggregator(cfg, partition, partitions)
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(nc, stop), name=agg.name)
    try:
        yield agg
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def publish(js: JetStreamContext, batches: list[tuple[str, str, codec.Batch]]) -> None:
    for subject, msg_id, batch in batches:
        await js.publish(subject, codec.encode(batch), headers={"Nats-Msg-Id": msg_id})


async def agg_windows(js: JetStreamContext) -> dict[WindowId, WindowRecord]:
    try:
        return windows_of(await query(js, Selector()))
    except QueryError:  # e.g. no JetStream leader for a moment after a node was killed
        return {}


async def wait_exact(
    js: JetStreamContext, want: dict[WindowId, dict[str, Any]], timeout: float = 40
) -> dict[WindowId, WindowRecord]:
    """Poll AGG until it holds every window closed with the expected count."""

    def complete(got: dict[WindowId, WindowRecord]) -> bool:
        return got.keys() == want.keys() and all(
            g.count == want[k]["count"] and g.closed for k, g in got.items()
        )

    got = await eventually(lambda: agg_windows(js), complete, timeout=timeout, interval=0.3)
    assert_windows_equal(got, want)
    return got


async def latest_keys(js: JetStreamContext) -> list[str]:
    kv = await js.key_value(subjects.LATEST_BUCKET)
    try:
        return list(await kv.keys())
    except NoKeysError:  # before the first put
        return []


async def dlq_messages(js: JetStreamContext) -> list[Any]:
    info = await js.stream_info(subjects.DLQ_STREAM)
    if not info.state.messages:
        return []
    return [
        await js.get_msg(subjects.DLQ_STREAM, s)
        for s in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def test_windows_equal_recomputation(nc: NatsClient, js: JetStreamContext) -> None:
    batches = make_batches(np.random.default_rng(1), seconds=90)
    async with running(nc, cloud_config()) as agg:
        await publish(js, batches)
        await wait_exact(js, recompute(rows_of(b for _, _, b in batches), WIDTHS))
        assert agg.stats.late_readings == 0 and agg.stats.bad_readings == 0
    assert await dlq_messages(js) == []


async def test_out_of_order_batches_change_nothing(nc: NatsClient, js: JetStreamContext) -> None:
    """An agent draining a backlog sends its batches in any order: same windows, exactly."""
    rng = np.random.default_rng(2)
    batches = make_batches(rng, seconds=120, batch_size=20)
    shuffled = [batches[i] for i in rng.permutation(len(batches))]
    # Lateness covers the backlog (two minutes of event time): nothing is late.
    async with running(nc, cloud_config(lateness_s=300)):
        await publish(js, shuffled)
        await wait_exact(js, recompute(rows_of(b for _, _, b in batches), WIDTHS))
    assert await dlq_messages(js) == []


async def test_late_within_lateness_reemits_beyond_goes_to_dlq(
    nc: NatsClient, js: JetStreamContext
) -> None:
    t0 = 1_700_000_000 * 10**9
    sec = 10**9

    def batch(n: int, rows: list[tuple[float, int]]) -> tuple[str, str, codec.Batch]:
        b = codec.ColumnBuilder("s1", "a1", f"b{n}")
        for value, t in rows:
            b.add("d1", "temp", "Cel", value, t0 + t, n * 100 + len(b))
        return ("telemetry.s1.a1", f"b{n}", b.build())

    on_time = batch(0, [(1.0, 1 * sec), (2.0, 12 * sec)])  # watermark 12 s: [0,10) closed
    within = batch(1, [(5.0, 3 * sec)])  # 10 + 5 > 12: accepted, window [0,10) re-emitted
    advance = batch(2, [(3.0, 30 * sec)])  # watermark 30 s: [0,10) final
    beyond = batch(3, [(9.0, 4 * sec), (4.0, 31 * sec)])  # 4 s is late for the 10 s window
    cfg = cloud_config(windows_s=[10], lateness_s=5, idle_close_s=60)
    async with running(nc, cfg) as agg:
        await publish(js, [on_time])
        first = await eventually(lambda: agg_windows(js), lambda w: len(w) == 1)
        assert next(iter(first.values())).count == 1
        await publish(js, [within, advance, beyond])
        await eventually(lambda: dlq_messages(js), lambda m: len(m) == 1)
        assert agg.stats.late_readings == 1
    window0 = (await agg_windows(js))[("10s", "s1", "d1", "temp", t0 - t0 % (10 * sec))]
    assert (window0.count, window0.max) == (2, 5.0)
    (letter,) = await dlq_messages(js)
    assert letter.headers["Gateway-Dead-Letter-Reason"] == "late_10s"
    assert codec.decode(letter.data).value.tolist() == [9.0]


async def test_bad_input_goes_to_dlq_and_is_counted(nc: NatsClient, js: JetStreamContext) -> None:
    b = codec.ColumnBuilder("s1", "a1", "x")
    b.add("d1", "temp", "Cel", float("nan"), 1_700_000_000 * 10**9, 1)
    b.add("d1", "temp", "Cel", 20.0, 1_700_000_000 * 10**9 + 1, 2)
    async with running(nc, cloud_config()) as agg:
        await js.publish("telemetry.s1.a1", b"not a batch at all")
        await js.publish("telemetry.s1.a1", codec.encode(b.build()))
        letters = await eventually(lambda: dlq_messages(js), lambda m: len(m) == 2)
        assert agg.stats.bad_messages == 1 and agg.stats.bad_readings == 1
        assert agg.stats.readings == 1
    reasons = sorted(m.headers["Gateway-Dead-Letter-Reason"] for m in letters)
    assert reasons == ["not_a_batch", "not_finite"]


async def test_restart_resumes_exactly(nc: NatsClient, js: JetStreamContext) -> None:
    """An orderly restart mid-stream (the kill -9 variant is in test_cloud_chaos)."""
    batches = make_batches(np.random.default_rng(4), seconds=120)
    want = recompute(rows_of(b for _, _, b in batches), WIDTHS)
    half = len(batches) // 2
    async with running(nc, cloud_config()) as agg:
        await publish(js, batches[:half])
        await eventually(lambda: asyncio.sleep(0, agg.last_seq), lambda s: s >= half)
    async with running(nc, cloud_config()) as agg:
        await publish(js, batches[half:])
        await wait_exact(js, want)
        assert agg.stats.replayed_messages > 0


async def test_a_batch_stored_twice_under_other_msg_ids_counts_once_across_restarts(
    nc: NatsClient, js: JetStreamContext
) -> None:
    """Issue 12: the same content in TELEMETRY twice (JetStream cannot tell: other ids),
    the copies before and after a restart, numbered and unnumbered readings alike."""
    batches = make_batches(np.random.default_rng(14), seconds=60, unnumbered=0.5)
    want = recompute(rows_of(b for _, _, b in batches), WIDTHS)
    half = len(batches) // 2
    again = [(s, f"{m}-again", b) for s, m, b in batches]
    async with running(nc, cloud_config()) as agg:
        await publish(
            js, [x for pair in zip(batches[:half], again[:half], strict=True) for x in pair]
        )
        await eventually(lambda: asyncio.sleep(0, agg.last_seq), lambda s: s >= 2 * half)
        assert agg.stats.duplicate_readings > 0
    async with running(nc, cloud_config()) as agg:
        await publish(
            js, [x for pair in zip(batches[half:], again[half:], strict=True) for x in pair]
        )
        await wait_exact(js, want)
        assert agg.stats.duplicate_readings > 0
        # A copy of a reading whose window its original made final is late (DLQ), not
        # counted: the windows are exact either way (docs/operations.md).
    assert (await js.stream_info(subjects.TELEMETRY_STREAM)).state.messages == 2 * len(batches)


async def test_partitioned_workers_equal_one(nc: NatsClient, js: JetStreamContext) -> None:
    batches = make_batches(np.random.default_rng(5), agents=5, seconds=60)
    cfg = cloud_config()
    async with running(nc, cfg, 0, 2) as w0, running(nc, cfg, 1, 2) as w1:
        await publish(js, batches)
        await wait_exact(js, recompute(rows_of(b for _, _, b in batches), WIDTHS))
        assert w0.stats.readings > 0 and w1.stats.readings > 0
        assert w0.stats.readings + w1.stats.readings == sum(len(b) for _, _, b in batches)


async def test_live_values_and_metrics(nc: NatsClient, js: JetStreamContext) -> None:
    import aiohttp

    batches = make_batches(np.random.default_rng(6), agents=1, seconds=30)
    async with running(nc, cloud_config(metrics_port=0)) as agg:
        await publish(js, batches)
        kv = await js.key_value(subjects.LATEST_BUCKET)
        keys = partial(latest_keys, js)
        found = await eventually(keys, lambda k: len(k) == 3 * 2 * len(WIDTHS))
        record = WindowRecord.from_json((await kv.get(found[0])).value or b"", strict=True)
        render({found[0]: record})  # the live table reads every field it needs
        url = f"http://127.0.0.1:{agg.metrics_port}/metrics"

        async def scrape() -> str:
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                return await r.text()

        text = await eventually(scrape, lambda t: "gateway_agg_readings_total" in t)
        assert "gateway_agg_consumer_pending" in text
        assert "gateway_agg_oldest_unprocessed_age_seconds" in text


async def shown_counts(js: JetStreamContext) -> dict[str, int]:
    """Count of the window each `AGG_LATEST` key shows."""
    kv = await js.key_value(subjects.LATEST_BUCKET)
    out = {}
    for key in await latest_keys(js):
        entry = await kv.get(key)
        out[key] = WindowRecord.from_json(entry.value or b"").count
    return out


def open_counts(batches: list[tuple[str, str, codec.Batch]]) -> dict[str, int]:
    """Readings per `AGG_LATEST` key, for batches that all fall in one window per width."""
    want = recompute(rows_of(b for _, _, b in batches), WIDTHS)
    assert len({k[:4] for k in want}) == len(want), "one window per series and width"
    return {subjects.latest_key(*k[:4]): doc["count"] for k, doc in want.items()}


async def test_a_quiet_stream_shows_every_reading_live(
    nc: NatsClient, js: JetStreamContext
) -> None:
    """Open windows only (nothing closes, no idle flush): the live view alone shows them,
    every reading counted, within `live_update_s` of the stream going quiet."""
    batches = make_batches(np.random.default_rng(8), agents=1, seconds=6, batch_size=7)
    async with running(nc, cloud_config(idle_close_s=3600, live_update_s=0.5)):
        await publish(js, batches)
        await eventually(partial(shown_counts, js), lambda got: got == open_counts(batches))


async def test_the_live_view_is_published_on_shutdown(nc: NatsClient, js: JetStreamContext) -> None:
    batches = make_batches(np.random.default_rng(9), agents=1, seconds=6, batch_size=7)
    async with running(nc, cloud_config(idle_close_s=3600, live_update_s=600)) as agg:
        await publish(js, batches)
        await eventually(lambda: asyncio.sleep(0, agg.last_seq), lambda n: n == len(batches))
        assert await latest_keys(js) == []  # not before `live_update_s`: nothing closed
    assert await shown_counts(js) == open_counts(batches)


async def test_unusable_checkpoint_rebuilds_from_the_stream(
    nc: NatsClient, js: JetStreamContext
) -> None:
    batches = make_batches(np.random.default_rng(7), agents=1, seconds=40)
    await publish(js, batches)
    state = await js.key_value(STATE_BUCKET)
    await state.put("aggregator-0of1", b"\x00garbage")
    async with running(nc, cloud_config()) as agg:
        await wait_exact(js, recompute(rows_of(b for _, _, b in batches), WIDTHS))
        assert agg.stats.replayed_messages == 0


async def test_stop_with_the_server_gone_ends_in_bounded_time(
    cloud_server: NatsServer, js: JetStreamContext
) -> None:
    batches = make_batches(np.random.default_rng(8), agents=1, seconds=30)
    client = await connect(cloud_server.client("aggregator"), "test")
    agg = Aggregator(cloud_config(idle_close_s=60))
    stop = asyncio.Event()
    task = asyncio.create_task(agg.run(client, stop))
    await publish(js, batches)
    await eventually(lambda: asyncio.sleep(0, agg.last_seq), lambda s: s == len(batches))
    await cloud_server.kill()
    stop.set()
    try:
        await asyncio.wait_for(task, 30)  # gives up its unacknowledged publishes, no hang
        with pytest.raises(Abandoned):  # what a publish does once stopping, server gone
            await agg._publish(client.jetstream(), "agg.x", b"{}", {})
    finally:
        # nats-py 2.16 over TLS: closing with the socket gone can raise AttributeError
        # (see gateway.connect.CLOSE_ERRORS).
        with contextlib.suppress(*CLOSE_ERRORS):
            await client.close()


async def test_checkpoint_of_another_stream_is_ignored(
    nc: NatsClient, js: JetStreamContext
) -> None:
    """TELEMETRY deleted and created again: its sequences restart, the checkpoint is stale."""
    first = make_batches(np.random.default_rng(10), agents=1, seconds=40)
    async with running(nc, cloud_config()):
        await publish(js, first)
        await wait_exact(js, recompute(rows_of(b for _, _, b in first), WIDTHS))
    for stream in (subjects.TELEMETRY_STREAM, subjects.AGG_STREAM):
        await js.delete_stream(stream)
    await ensure_streams(js, StreamSettings())
    again = make_batches(np.random.default_rng(11), agents=1, seconds=20)
    await publish(js, again)
    async with running(nc, cloud_config()):
        await wait_exact(js, recompute(rows_of(b for _, _, b in again), WIDTHS))
