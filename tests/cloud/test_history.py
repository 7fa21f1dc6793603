"""History read by time: the bisected query equals a full scan and reads about what it
returns; `/api/series` picks the width and answers columns equal to the recomputation."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from cloud.records import IndexBounds, WindowId, WindowRecord
from cloud.views.auth import ApiAuth, create_token
from cloud.views.http import http_api
from cloud.views.query import Selector, choose_window, locate, read
from gateway import subjects
from tests.cloud.reference import make_batches, recompute, rows_of
from tests.cloud.test_aggregator import WIDTHS, cloud_config, publish, running, wait_exact

T0 = 1_700_000_000 * 10**9 // (3600 * 10**9) * (3600 * 10**9)  # on an hour boundary
S = 10**9


async def full_scan(
    js: JetStreamContext, sel: Selector
) -> tuple[dict[WindowId, WindowRecord], int]:
    """What the query answered before it was indexed: every AGG record, last one wins."""
    sub = await js.pull_subscribe(
        "agg.>", stream=subjects.AGG_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0),
    )  # fmt: skip
    latest: dict[WindowId, WindowRecord] = {}
    remaining = total = int((await sub.consumer_info()).num_pending or 0)
    while remaining > 0:
        msgs = await sub.fetch(min(1000, remaining), timeout=5)
        remaining -= len(msgs)
        for m in msgs:
            assert IndexBounds.from_headers(m.headers) is not None, "every record is indexed"
            r = WindowRecord.from_json(m.data)
            if sel.matches(r):
                latest[r.window_id] = r
    await sub.unsubscribe()
    return latest, total


@pytest.fixture
async def two_hours(nc: NatsClient, js: JetStreamContext) -> dict[WindowId, dict[str, object]]:
    """Two hours of one agent's readings, aggregated; returns the recomputation."""
    batches = make_batches(
        np.random.default_rng(31), agents=1, devices=2, seconds=7200, rate_hz=0.25, t0=T0,
        batch_size=40,
    )  # fmt: skip
    want = recompute(rows_of(b for _, _, b in batches), WIDTHS)
    # A few messages per fetch, as when readings arrive live: one `due` of a backlog can
    # span a long time, and the bounds are only as tight as one `due` (docs/api.md).
    async with running(nc, cloud_config(fetch_batch=2)):
        await publish(js, batches)
        await wait_exact(js, want, timeout=60)
    return want


@pytest.mark.parametrize(
    ("device", "window", "lo_s", "hi_s"),
    [
        ("a0-d1", "10s", 3000, 3600),  # one series, ten minutes
        ("a0-d0", "1m", 0, 7200),  # the whole history
        (None, "10s", 6600, None),  # every series, the last ten minutes, open-ended
        ("a0-d0", "10s", 8000, 9000),  # after the last window: nothing
    ],
)
async def test_bisected_query_equals_a_full_scan_and_reads_about_the_answer(
    js: JetStreamContext,
    two_hours: dict[WindowId, dict[str, object]],
    device: str | None,
    window: str,
    lo_s: int,
    hi_s: int | None,
) -> None:
    sel = Selector(
        "s1", device, None, window, T0 + lo_s * S, None if hi_s is None else T0 + hi_s * S
    )
    want, total = await full_scan(js, sel)
    plan = await locate(js, sel)
    counted = [0]
    got = await read(js, sel, plan, counted=counted)
    assert {r.window_id: r for r in got} == want
    # Cost: the answer plus the few records around its edges the bounds cannot exclude
    # (an hour of one width of one series is 360 records; the stream holds `total`).
    assert counted[0] <= len(want) + 60 * len(plan.subjects), (counted[0], len(want), total)
    assert plan.gets <= 2 * len(plan.subjects) * max(1, total).bit_length()


async def test_series_api_picks_the_width_and_answers_the_recomputed_columns(
    nc: NatsClient, two_hours: dict[WindowId, dict[str, object]], tmp_path: Path
) -> None:
    _, token = create_token(tmp_path / "tokens.jsonl", "viewer")  # the API needs a token
    auth = ApiAuth.from_file(tmp_path / "tokens.jsonl")
    async with (
        http_api(nc, 0, auth) as port,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as http,
    ):
        base = {"site": "s1", "device": "a0-d0", "metric": "temp"}
        span = {"from": str(T0), "to": str(T0 + 7200 * S)}
        async with http.get("/api/series", params={**base, **span, "points": "100"}) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        # 120 one-minute windows is the coarsest width giving at least 100 points.
        assert (doc["window"], doc["width_s"], len(doc["times"])) == ("1m", 60, 120)
        for i, start in enumerate(doc["times"]):
            w = two_hours[("1m", "s1", "a0-d0", "temp", start)]
            assert (doc["count"][i], doc["min"][i], doc["max"][i], doc["p95"][i]) == (
                w["count"], w["min"], w["max"], w["p95"],
            )  # fmt: skip
            assert doc["mean"][i] == pytest.approx(w["mean"], rel=1e-12)
        assert doc["read"] <= 120 + 30
        async with http.get("/api/series", params={**base, **span, "points": "500"}) as r:
            doc = await r.json()
        assert (doc["window"], len(doc["times"])) == ("10s", 720)  # finest when none fits

        for params, why in [
            ({"site": "s1", "metric": "temp"}, "device: required"),
            ({**base, "points": "many"}, "points 'many'"),
            ({**base, "points": "0"}, "points 0"),
            ({**base, "device": "a.b"}, "invalid device"),
            ({**base, "from": "yesterday"}, "time 'yesterday'"),
            ({**base, "from": str(T0), "to": str(T0)}, "before to"),
        ]:
            async with http.get("/api/series", params=params) as r:
                assert r.status == 400, params
                assert why in (await r.json())["error"]


def test_choose_window() -> None:
    day = 86400 * S
    widths = [10, 60, 3600, 86400]
    assert choose_window(widths, 30 * day, 500) == 3600  # 720 hourly points
    assert choose_window(widths, 30 * day, 30) == 86400
    assert choose_window(widths, 3600 * S, 500) == 10  # nothing fits: the finest
    assert choose_window(widths, 3600 * S, 60) == 60
