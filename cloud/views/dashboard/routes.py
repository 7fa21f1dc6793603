"""The dashboard's routes on the API's aiohttp app (`add_dashboard`), all behind its
authentication (cloud/views/auth.py): a person logs in once with a token at
`/dashboard/login` and gets a session cookie; a client sends its bearer token as for the
API. Pages are static HTML + JS (no build step, nothing fetched at run time); the data
comes from the JSON routes documented in docs/api.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from nats.aio.client import Client as NatsClient

from cloud.views.auth import AUTH_KEY, SESSION_COOKIE, SESSIONS_KEY, Sessions
from cloud.views.dashboard.heartbeats import Heartbeats
from cloud.views.dashboard.streams import catalog as read_catalog
from cloud.views.dashboard.streams import dead_letters as read_dead_letters
from cloud.views.dashboard.streams import pipeline as read_pipeline
from gateway import subjects

STATIC = Path(__file__).parent / "static"
PAGES = ("series", "fleet", "agent", "deadletters", "pipeline")
HEARTBEATS_KEY = web.AppKey("heartbeats", Heartbeats)
NC_KEY = web.AppKey("dashboard_nc", NatsClient)
# Data is shown with textContent only; the policy also refuses any inline or foreign script.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
)


def _nc(request: web.Request) -> NatsClient:
    return request.app[NC_KEY]


def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _html(name: str, page: str = "") -> web.Response:
    text = (STATIC / name).read_text().replace("{{page}}", page)
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


async def page(request: web.Request) -> web.Response:
    name = request.match_info.get("page", "series") or "series"
    if name not in PAGES:
        raise web.HTTPNotFound()
    return _html("page.html", name)


async def login_form(request: web.Request) -> web.Response:
    return _html("login.html")


async def login(request: web.Request) -> web.StreamResponse:
    """A token posted from the form opens a session; a wrong one gets the form again (401).
    The token itself is never stored, logged or echoed."""
    form = await request.post()
    token = str(form.get("token", "")).strip()
    role = request.app[AUTH_KEY].role_of(token) if token else None
    if role is None:
        resp = _html("login.html")
        resp.set_status(401)
        return resp
    sid = request.app[SESSIONS_KEY].open(role)
    resp = web.HTTPSeeOther("/dashboard/")
    resp.set_cookie(
        SESSION_COOKIE,
        sid,
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
        path="/",
        max_age=int(request.app[SESSIONS_KEY].ttl_s),
    )
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS_KEY].close(request.cookies.get(SESSION_COOKIE, ""))
    resp = web.HTTPSeeOther("/dashboard/login")
    resp.del_cookie(SESSION_COOKIE, path="/")
    raise resp


async def fleet(request: web.Request) -> web.Response:
    rows = await request.app[HEARTBEATS_KEY].fleet(_nc(request))
    return _json([asdict(r) for r in rows])


async def agent(request: web.Request) -> web.Response:
    """The agent's latest heartbeat as it sent it (sources and per-source accounting)."""
    site = subjects.check_token("site", request.query.get("site", ""))
    name = subjects.check_token("agent", request.query.get("agent", ""))
    beat = request.app[HEARTBEATS_KEY].latest(site, name)
    if beat is None:
        return web.json_response({"error": f"no heartbeat from {site}/{name} yet"}, status=404)
    return web.Response(body=beat.snapshot, content_type="application/json")


async def catalog(request: web.Request) -> web.Response:
    return _json(await read_catalog(_nc(request).jetstream()))


async def dead_letters(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", "200"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 5000:
        return web.json_response({"error": "limit: expected an integer 1..5000"}, status=400)
    return _json(await read_dead_letters(_nc(request).jetstream(), limit))


async def pipeline(request: web.Request) -> web.Response:
    hb = request.app[HEARTBEATS_KEY]
    rows = await hb.fleet(_nc(request))
    state = await read_pipeline(_nc(request).jetstream(), time.time_ns())
    rates = [r.readings_per_s for r in rows if r.online and r.readings_per_s is not None]
    return _json({**asdict(state), "readings_per_s": round(sum(rates), 2)})


async def _heartbeats(app: web.Application) -> AsyncIterator[None]:
    hb = app[HEARTBEATS_KEY]
    await hb.start(app[NC_KEY])
    yield
    await hb.stop()


def add_dashboard(app: web.Application, nc: NatsClient) -> None:
    app[NC_KEY] = nc
    app[SESSIONS_KEY] = Sessions()
    app[HEARTBEATS_KEY] = Heartbeats()
    app.cleanup_ctx.append(_heartbeats)
    app.on_response_prepare.append(_security_headers)
    r = app.router
    r.add_get("/dashboard/login", login_form)
    r.add_post("/dashboard/login", login)
    r.add_post("/dashboard/logout", logout)
    r.add_get("/dashboard/", page)
    r.add_get("/dashboard/{page}", page)
    r.add_static("/dashboard/static/", STATIC, append_version=False)
    r.add_get("/api/fleet", fleet)
    r.add_get("/api/agent", agent)
    r.add_get("/api/catalog", catalog)
    r.add_get("/api/deadletters", dead_letters)
    r.add_get("/api/pipeline", pipeline)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/dashboard"):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
