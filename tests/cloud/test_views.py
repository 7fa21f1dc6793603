"""Views of the cloud tier: `gateway query`, the HTTP API (JSON, CSV, SSE), `gateway watch`,
and `gateway cloud init`, each against a real server and compared with the recomputation."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from rich.console import Console

from cloud.records import WindowId, WindowRecord
from cloud.up import api_tokens_file
from cloud.views.auth import ApiAuth, create_token
from cloud.views.http import http_api
from cloud.views.watch import watch
from gateway import process, subjects
from gateway.config import CloudConfig
from gateway.connect import connect
from gateway.security import CloudSecurity
from gateway.servers import NatsServer, free_port
from tests.cloud.reference import (
    assert_windows_equal,
    make_batches,
    recompute,
    rows_of,
    stream_rows,
    windows_of_json,
)
from tests.cloud.test_aggregator import (
    WIDTHS,
    cloud_config,
    latest_keys,
    publish,
    running,
    wait_exact,
)
from tests.helpers import cli_nats, eventually, gateway

T0 = 1_700_000_000 * 10**9 // (60 * 10**9) * (60 * 10**9)  # on a minute boundary


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


def csv_records(text: str) -> list[dict[str, Any]]:
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        rec: dict[str, Any] = dict(row)
        for k in ("start_ns", "end_ns", "count"):
            rec[k] = int(row[k])
        for k in ("min", "max", "sum", "mean", "stddev", "p50", "p95", "first", "last"):
            rec[k] = float(row[k])
        out.append(rec)
    return out


async def test_query_over_a_stored_hour_equals_recomputation(
    cloud_server: NatsServer, nc: NatsClient, js: JetStreamContext
) -> None:
    batches = make_batches(
        np.random.default_rng(21), agents=1, devices=2, seconds=3600, rate_hz=0.5, t0=T0,
        batch_size=100,
    )  # fmt: skip
    async with running(nc, cloud_config()):
        await publish(js, batches)
        want = recompute(await stream_rows(js), WIDTHS)  # from the raw TELEMETRY stream
        await wait_exact(js, want, timeout=60)
    hour = ("--from", iso(T0), "--to", iso(T0 + 3600 * 10**9))
    code, out, err = await gateway("query", *cli_nats(cloud_server, "views"), *hour)
    assert code == 0, err
    got = windows_of_json(orjson.loads(out))
    assert len(got) == 360 * 4 + 60 * 4
    assert {k: g.count for k, g in got.items()} == {k: w["count"] for k, w in want.items()}
    for key, w in want.items():
        for field in ("min", "max", "p50", "p95", "first", "last"):
            assert getattr(got[key], field) == w[field], (key, field)

    # One series, one window width, a sub-range, as CSV: floats round-trip exactly.
    sub = ("--from", iso(T0 + 600 * 10**9), "--to", iso(T0 + 1200 * 10**9))
    sel = ("--device", "a0-d1", "--metric", "hum", "--window", "10s")
    views = cli_nats(cloud_server, "views")
    code, out, err = await gateway("query", *views, *sel, *sub, "--format", "csv")
    assert code == 0, err
    rows = csv_records(out)
    expect = {
        k: w for k, w in want.items()
        if k[0] == "10s" and k[2:4] == ("a0-d1", "hum")
        and T0 + 600 * 10**9 <= k[4] < T0 + 1200 * 10**9
    }  # fmt: skip
    assert len(rows) == len(expect) == 60
    for r in rows:
        w = expect[("10s", r["site"], r["device"], r["metric"], r["start_ns"])]
        assert (r["count"], r["p95"], r["last"]) == (w["count"], w["p95"], w["last"])

    code, _, err = await gateway("query", *cli_nats(cloud_server, "views"), "--site", "bad.site")
    assert code == 2 and "invalid site" in err


@contextlib.asynccontextmanager
async def viewer_api(nc: NatsClient, tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP API on a free port and a session holding a viewer's token."""
    _, token = create_token(tmp_path / "tokens.jsonl", "viewer")
    auth = ApiAuth.from_file(tmp_path / "tokens.jsonl")
    async with (
        http_api(nc, 0, auth) as port,
        aiohttp.ClientSession(
            f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as http,
    ):
        yield http


async def test_http_api_windows_latest_live_and_bad_requests(
    nc: NatsClient, js: JetStreamContext, tmp_path: Path
) -> None:
    batches = make_batches(np.random.default_rng(22), agents=1, seconds=60, t0=T0)
    want = recompute(rows_of(b for _, _, b in batches), WIDTHS)
    async with running(nc, cloud_config()), viewer_api(nc, tmp_path) as http:
        await publish(js, batches)
        await wait_exact(js, want)
        async with http.get("/api/windows", params={"window": "1m"}) as r:
            assert r.status == 200
            got = windows_of_json(await r.json())
        assert got.keys() == {k for k in want if k[0] == "1m"}
        async with http.get("/api/windows", params={"device": "a0-d0", "format": "csv"}) as r:
            assert r.headers["Content-Type"].startswith("text/csv")
            assert len(csv_records(await r.text())) == sum(1 for k in want if k[2] == "a0-d0")
        async with http.get("/api/latest", params={"metric": "temp"}) as r:
            latest = [WindowRecord.from_doc(x, strict=True) for x in await r.json()]
        assert {(x.device, x.window) for x in latest} == {
            (f"a0-d{d}", w) for d in range(3) for w in ("10s", "1m")
        }
        for params in ({"site": "a.b"}, {"format": "xml"}, {"from": "yesterday"}):
            async with http.get("/api/windows", params=params) as r:
                assert r.status == 400, params
                assert "error" in await r.json()

        async with http.get("/api/live", params={"device": "a0-d2"}) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            more = make_batches(np.random.default_rng(23), agents=1, seconds=20,
                                t0=T0 + 3600 * 10**9)  # fmt: skip
            await publish(js, [(s, f"late-{i}", b) for i, (s, _, b) in enumerate(more)])
            event = await asyncio.wait_for(_next_event(r), 20)
        assert event.device == "a0-d2"


async def _next_event(r: aiohttp.ClientResponse) -> WindowRecord:
    async for line in r.content:
        if line.startswith(b"data: "):
            return WindowRecord.from_json(line[6:].strip(), strict=True)
    raise AssertionError("event stream ended")


async def test_watch_shows_only_the_selected_series(nc: NatsClient, js: JetStreamContext) -> None:
    batches = make_batches(np.random.default_rng(24), agents=2, seconds=30, t0=T0)
    async with running(nc, cloud_config()):
        await publish(js, batches)
        await eventually(lambda: latest_keys(js), lambda k: len(k) == 2 * 3 * 2 * 2)
    buf = io.StringIO()
    await watch(nc, Console(file=buf, width=200), duration=1.0, key_filter="10s.s1.a1-d0.*")
    text = buf.getvalue()
    assert "a1-d0" in text and "a0-d0" not in text and "a1-d1" not in text


async def test_cloud_init_is_idempotent_and_applies_changes(
    cloud_server: NatsServer, tmp_path: Any
) -> None:
    code, out, err = await gateway("cloud", "init", *cli_nats(cloud_server))
    assert code == 0, err
    assert "TELEMETRY: created" in out and "AGG_STATE: created" in out
    code, out, _ = await gateway("cloud", "init", *cli_nats(cloud_server))
    assert "TELEMETRY: unchanged" in out and "created" not in out
    conf = tmp_path / "cloud.toml"
    conf.write_text("[streams]\ntelemetry_max_age_s = 3600\nagg_max_bytes = 1000000\n")
    code, out, _ = await gateway("cloud", "init", *cli_nats(cloud_server), "--config",
                                 str(conf))  # fmt: skip
    assert "TELEMETRY: updated" in out and "AGG: updated" in out and "DLQ: unchanged" in out


async def test_cloud_up_serves_exact_windows_and_stops_cleanly(tmp_path: Any) -> None:
    nats_port, http_port = free_port(), free_port()
    log = tmp_path / "up.log"
    security = CloudSecurity.ensure(tmp_path / "cloud")  # what cloud up then finds and uses
    _, token = create_token(api_tokens_file(tmp_path / "cloud"), "viewer")
    proc = process.spawn(
        [sys.executable, "-m", "app", "cloud", "up", "--data-dir", str(tmp_path / "cloud"),
         "--port", str(nats_port), "--http-port", str(http_port), "--workers", "2"],
        log,
    )  # fmt: skip
    try:
        # `cloud up` serves HTTPS with a certificate from the CA it found (tls/http.pem).
        ca = ssl.create_default_context(cafile=str(security.tls.ca))
        async with aiohttp.ClientSession(
            f"https://127.0.0.1:{http_port}",
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(ssl=ca),
        ) as http:

            async def health() -> bool:
                try:
                    async with http.get("/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(health, bool, timeout=30)
            batches = make_batches(np.random.default_rng(25), agents=3, seconds=30, t0=T0)
            # The default widths: 10 s, 1 min and the 1 h and 1 d rollups.
            default = CloudConfig().aggregator.windows_s
            want = recompute(rows_of(b for _, _, b in batches), default)
            client = await connect(security.settings(f"nats://127.0.0.1:{nats_port}"), "t")
            try:
                await publish(client.jetstream(), batches)
            finally:
                await client.close()

            async def windows() -> dict[WindowId, WindowRecord]:
                async with http.get("/api/windows") as r:
                    return windows_of_json(await r.json())

            got = await eventually(
                windows, lambda w: {k: g.count for k, g in w.items()}
                == {k: x["count"] for k, x in want.items()}, timeout=30,
            )  # fmt: skip
            assert_windows_equal(got, want)
    finally:
        code = await asyncio.to_thread(process.stop, proc, 20)
    assert code == 0, process.tail(log)
    with pytest.raises(OSError):  # its nats-server is gone too
        socket.create_connection(("127.0.0.1", nats_port), timeout=2).close()


async def test_series_api_of_a_series_with_only_open_windows_is_an_empty_chart(
    nc: NatsClient, js: JetStreamContext, tmp_path: Path
) -> None:
    """A series that just started has its open window in AGG_LATEST and nothing in AGG yet:
    a chart up to now is empty (200), not "JetStream unavailable" (it answered 503)."""
    now = time.time_ns()
    start = now - now % (10 * 10**9)
    open_window = WindowRecord(
        site="s1", device="fresh", metric="temp", unit="Cel", window="10s",
        start_ns=start, end_ns=start + 10 * 10**9, count=1, min=20.0, max=20.0, sum=20.0,
        mean=20.0, stddev=0.0, p50=20.0, p95=20.0, first=20.0, last=20.0, closed=False,
    )  # fmt: skip
    kv = await js.key_value(subjects.LATEST_BUCKET)
    await kv.put(open_window.latest_key(), open_window.to_json())
    async with viewer_api(nc, tmp_path) as http:
        params = {"site": "s1", "device": "fresh", "metric": "temp", "points": "100"}
        async with http.get("/api/series", params={**params, "to": str(now)}) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        assert (doc["window"], doc["times"], doc["count"], doc["read"]) == ("", [], [], 0)
        async with http.get("/api/latest", params={"device": "fresh"}) as r:
            assert [w["start_ns"] for w in await r.json()] == [start]  # the live view has it
