"""HTTP JSON API of the cloud tier (documented in docs/api.md): HTTPS with the cloud's CA,
plain HTTP on 127.0.0.1 only without one (cloud/httpd.py).

- `GET /api/windows` - history from the AGG stream (`gateway query`), JSON or CSV;
- `GET /api/series` - one series as chart-ready columns (`gateway query --points N`);
- `GET /api/latest` - the latest window of each series, from the AGG_LATEST bucket;
- `GET /api/live` - the same, live: server-sent events, one `window` event per update;
- `GET /healthz` (open; every other route needs a bearer token: cloud/views/auth.py).
All take the filters `site`, `device`, `metric`, `window`; `/api/windows` also `from`, `to`
and `format`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from cloud.errors import QueryError, TooManyClients
from cloud.httpd import LOOPBACK, HttpTls, base_url, serve_app
from cloud.records import WindowRecord
from cloud.views.auth import AUTH_KEY, ApiAuth, authenticate
from cloud.views.dashboard import add_dashboard
from cloud.views.live import LiveHub
from cloud.views.query import Selector, parse_time, query, series, to_csv
from gateway import subjects
from gateway.errors import ConfigError, InvalidTokenError
from gateway.kv_read import read_all

NC_KEY = web.AppKey("nc", NatsClient)
HUB_KEY = web.AppKey("live", LiveHub)
DEFAULT_LIVE_CLIENTS = 1000
HEARTBEAT_S = 15.0
GONE_CHECK_S = 1.0


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


def _selector(request: web.Request) -> Selector:
    q = request.query
    return Selector(
        q.get("site"),
        q.get("device"),
        q.get("metric"),
        q.get("window"),
        parse_time(q["from"]) if "from" in q else None,
        parse_time(q["to"]) if "to" in q else None,
    )


def _json(records: Any) -> web.Response:
    return web.Response(body=orjson.dumps(records), content_type="application/json")


@web.middleware
async def _bad_request(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bad filters: 400 with the reason; JetStream unavailable: 503. Never a bare 500."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except (ConfigError, InvalidTokenError) as exc:
        return _error(400, str(exc))
    except QueryError as exc:
        return _error(503, str(exc))


async def windows(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        return _error(400, f"format {fmt!r}: expected json or csv")
    sel = _selector(request)
    records = await query(request.app[NC_KEY].jetstream(), sel)
    if fmt == "csv":
        return web.Response(text=to_csv(records), content_type="text/csv")
    return _json(records)


async def series_columns(request: web.Request) -> web.Response:
    q = request.query
    missing = [k for k in ("site", "device", "metric") if not q.get(k)]
    if missing:
        return _error(400, f"{', '.join(missing)}: required")
    try:
        points = int(q.get("points", "500"))
    except ValueError:
        return _error(400, f"points {q['points']!r}: expected an integer")
    sel = _selector(request)  # checks the names and parses the times
    assert sel.site and sel.device and sel.metric
    columns = await series(
        request.app[NC_KEY].jetstream(),
        sel.site,
        sel.device,
        sel.metric,
        sel.start_ns,
        sel.end_ns,
        points,
    )
    return web.Response(body=columns.to_json(), content_type="application/json")


async def latest(request: web.Request) -> web.Response:
    sel = _selector(request)
    try:
        values = await read_all(
            request.app[NC_KEY].jetstream(), subjects.LATEST_BUCKET, sel.kv_key()
        )
    except NotFoundError:  # no aggregator has run yet
        return _json([])
    out = [WindowRecord.from_json(v) for v in values.values() if v]
    out.sort(key=lambda r: (r.site, r.device, r.metric, r.window))
    return _json(out)


async def live(request: web.Request) -> web.StreamResponse:
    key_filter = _selector(request).kv_key()  # bad names: 400 before the stream starts
    try:
        async with request.app[HUB_KEY].subscribe(key_filter) as queue:
            return await _events(request, queue)
    except TooManyClients as exc:
        return _error(503, str(exc))


async def _events(request: web.Request, queue: asyncio.Queue[bytes | None]) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    quiet = 0.0
    with contextlib.suppress(ConnectionResetError):  # the client went away mid-write
        while not _gone(request):
            try:
                value = await asyncio.wait_for(queue.get(), GONE_CHECK_S)
            except TimeoutError:
                # Nothing to send: notice a client that left within a second (its share
                # of the feed goes with it), and keep proxies from timing out.
                quiet += GONE_CHECK_S
                if quiet >= HEARTBEAT_S:
                    await resp.write(b": keep-alive\n\n")
                    quiet = 0.0
                continue
            if value is None:
                break  # fell too far behind, or the server is stopping
            await resp.write(b"event: window\ndata: " + value + b"\n\n")
    return resp


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def healthz(request: web.Request) -> web.Response:
    return _json({"nats": request.app[NC_KEY].is_connected})


def make_app(
    nc: NatsClient, auth: ApiAuth, live_clients: int = DEFAULT_LIVE_CLIENTS
) -> web.Application:
    app = web.Application(middlewares=[authenticate, _bad_request])
    app[NC_KEY] = nc
    app[AUTH_KEY] = auth
    app[HUB_KEY] = hub = LiveHub(nc, live_clients)

    async def close_feeds(_: web.Application) -> None:
        await hub.aclose()

    app.on_shutdown.append(close_feeds)
    app.router.add_get("/api/windows", windows)
    app.router.add_get("/api/series", series_columns)
    app.router.add_get("/api/latest", latest)
    app.router.add_get("/api/live", live)
    app.router.add_get("/healthz", healthz)
    add_dashboard(app, nc)  # the pages and their JSON routes (docs/dashboard.md)
    return app


@contextlib.asynccontextmanager
async def http_api(
    nc: NatsClient,
    port: int,
    auth: ApiAuth,
    live_clients: int = DEFAULT_LIVE_CLIENTS,
    tls: HttpTls | None = None,
    host: str = LOOPBACK,
) -> AsyncIterator[int]:
    async with serve_app(make_app(nc, auth, live_clients), port, tls, host) as bound:
        yield bound


def announce(host: str, port: int, tls: HttpTls | None) -> None:
    url = base_url(host, port, tls)
    print(f"HTTP API on {url}/api/ (docs/api.md)", flush=True)
    print(f"dashboard on {url}/dashboard/ (docs/dashboard.md)", flush=True)


async def serve(
    nc: NatsClient,
    port: int,
    auth: ApiAuth,
    stop: asyncio.Event,
    live_clients: int = DEFAULT_LIVE_CLIENTS,
    tls: HttpTls | None = None,
    host: str = LOOPBACK,
) -> None:
    async with http_api(nc, port, auth, live_clients, tls, host) as bound:
        announce(host, bound, tls)
        await stop.wait()
